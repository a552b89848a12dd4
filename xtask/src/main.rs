//! meshgate's task runner, `cargo xtask <recipe>` (the alias is in `.cargo/config.toml`).
//!
//! Each recipe is *the* way to do its task: the README documents them, `.ci/run` calls `cargo xtask ci`,
//! and developers run the same ones, so "how CI tests" and "how I test" cannot drift apart. The runner
//! itself only decides what to run and in which order; every step shells out (cargo, rustup, apt-get, the
//! repository's scripts), and each command is echoed before it runs.

use std::env;
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus};
use std::time::Instant;

/// cargo-deny is pinned so CI's verdicts change only when this line does.
const CARGO_DENY_VERSION: &str = "0.20.2";

/// What the tests run, as (command, Debian package): TLS and admin checks use `openssl` and `curl`, the
/// end-to-end tests stop processes with `kill`, and the network-namespace tests
/// (crates/meshgate/tests/netns.rs) need `ip` and `tcpdump`. The image (`image`) is built from a
/// Debian base made by `mmdebstrap` with `podman` and run with `runc` (crates/meshgate/tests/image.rs);
/// crates/meshgate/tests/prometheus.rs runs `prometheus` and `promtool`; `deploy-check` makes a
/// Python venv (`python3-venv`) and strips nothing itself (`objcopy` strips the image's binary).
const TOOLS: [(&str, &str); 11] = [
    ("openssl", "openssl"),
    ("curl", "curl"),
    ("kill", "procps"),
    ("ip", "iproute2"),
    ("tcpdump", "tcpdump"),
    ("podman", "podman"),
    ("runc", "runc"),
    ("mmdebstrap", "mmdebstrap"),
    ("prometheus", "prometheus"),
    ("promtool", "prometheus"),
    ("objcopy", "binutils"),
];

/// Debian packages without a command of their own to look for: the venv module of Debian's Python.
const DEB_PACKAGES: [&str; 1] = ["python3-venv"];

/// The image the tests run (`MESHGATE_IMAGE` for crates/meshgate/tests/image.rs).
const IMAGE: &str = "localhost/meshgate:dev";
/// The Debian release of the image's base, and the local image made from it.
const BASE_RELEASE: &str = "trixie";
const BASE_IMAGE: &str = "localhost/meshgate-base:trixie";
/// Where the base's tarball is cached (mmdebstrap takes ~30 s to a minute; the tarball ~120 MB).
const BASE_TARBALL: &str = "target/tools/image/base-trixie.tar";
/// The stripped binary and its debug info, staged for the Dockerfile's `prebuilt` target.
const STAGED_BINARY: &str = "target/image/meshgate";
const STAGED_DEBUG: &str = "target/image/meshgate.debug";

/// deploy/check.py's venv and the pinned validators it installs (deploy/requirements.txt).
const DEPLOY_VENV: &str = "target/tools/deploy-venv";
const DEPLOY_REQUIREMENTS: &str = "deploy/requirements.txt";

/// The glommio patch-series check and glommio's own tests (see vendor/README.md).
const VENDOR_SCRIPTS: [&str; 2] = ["vendor/check.sh", "vendor/test-glommio.sh"];

const RECIPES: [(&str, &str); 11] = [
    (
        "install",
        "what the tests need, as CI installs it: apt packages, the Wasm target, Consul 1.8.7",
    ),
    (
        "test",
        "the test command: `install`, `image`, `deploy-check`, then `cargo test --workspace --locked` (extra args go to cargo test)",
    ),
    (
        "image",
        "the container image from the release binary (stripped) on a Debian base made by mmdebstrap, as localhost/meshgate:dev",
    ),
    (
        "deploy-check",
        "deploy/: Kubernetes manifests (kubernetes-validate) and the Nomad job (python-hcl2), held to the image's contract",
    ),
    (
        "lint",
        "rustfmt check (workspace and plugins/), clippy -D warnings, rustdoc -D warnings",
    ),
    (
        "deny",
        "cargo deny: licences, bans, sources; advisories when the RustSec database can be fetched",
    ),
    (
        "vendor",
        "vendored glommio: vendor/check.sh (upstream + patches), then vendor/test-glommio.sh",
    ),
    (
        "bench-smoke",
        "one pass of each micro-benchmark (every bench target: sni, route, plugin)",
    ),
    (
        "prepare",
        "what later steps fetch or build besides our code: the image's base, deploy-check's venv, cargo-deny",
    ),
    (
        "ci",
        "everything CI runs, in order: install, lint (with `prepare` beside it), deny, vendor, image, deploy-check, test, bench-smoke",
    ),
    ("help", "this list"),
];

/// Why a recipe stopped.
#[derive(Debug)]
enum Error {
    /// The command line named no known recipe.
    Usage(String),
    /// A command could not be started at all.
    Spawn { what: String, source: io::Error },
    /// A command ran and failed.
    Failed { what: String, status: ExitStatus },
    /// Something a recipe needs is not in the repository or on the machine.
    Missing(String),
    /// A file the runner reads itself could not be read.
    Io { path: PathBuf, source: io::Error },
    /// The repository breaks one of its own rules.
    Policy(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(msg) => write!(f, "{msg}\n\n{}", usage()),
            Error::Spawn { what, source } => write!(f, "could not run `{what}`: {source}"),
            Error::Failed { what, status } => write!(f, "`{what}` failed ({status})"),
            Error::Missing(msg) | Error::Policy(msg) => f.write_str(msg),
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
        }
    }
}

fn main() -> ExitCode {
    let mut args = env::args_os().skip(1);
    let recipe = args.next().map(|a| a.to_string_lossy().into_owned());
    let rest: Vec<OsString> = args.collect();
    // Every path below is relative to the repository root, wherever the runner was started.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if let Err(e) = env::set_current_dir(&root) {
        eprintln!("xtask: cannot enter {}: {e}", root.display());
        return ExitCode::FAILURE;
    }
    let result = match recipe.as_deref() {
        None | Some("help" | "-h" | "--help") => {
            println!("{}", usage());
            Ok(())
        }
        Some("install") => install(),
        Some("test") => test(&rest),
        Some("image") => image(),
        Some("deploy-check") => deploy_check(),
        Some("lint") => lint(),
        Some("deny") => deny(),
        Some("vendor") => vendor(),
        Some("bench-smoke") => bench_smoke(),
        Some("ci") => ci(),
        Some("prepare") => prepare(),
        Some(other) => Err(Error::Usage(format!("unknown recipe `{other}`"))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> String {
    let mut s = String::from("usage: cargo xtask <recipe>\n\nrecipes:\n");
    for (name, what) in RECIPES {
        s.push_str(&format!("  {name:<12} {what}\n"));
    }
    s
}

/// Installs what the tests need, exactly as CI does. As root, missing apt packages are installed; as
/// anyone else, the runner says what is missing and which tests to skip instead of failing here (the
/// tests then fail with the same advice unless skipped).
fn install() -> Result<(), Error> {
    section("install");
    let mut missing: Vec<(&str, &str)> = TOOLS.into_iter().filter(|(t, _)| !on_path(t)).collect();
    missing.extend(
        DEB_PACKAGES
            .into_iter()
            .filter(|p| !deb_installed(p))
            .map(|p| (p, p)),
    );
    if !missing.is_empty() {
        let mut packages: Vec<&str> = missing.iter().map(|(_, p)| *p).collect();
        packages.sort_unstable();
        packages.dedup();
        if is_root() {
            run(Command::new("apt-get")
                .args(["update", "-qq"])
                .env("DEBIAN_FRONTEND", "noninteractive"))?;
            run(Command::new("apt-get")
                .args(["install", "-y", "-qq"])
                .args(&packages)
                .env("DEBIAN_FRONTEND", "noninteractive"))?;
        } else {
            let tools: Vec<&str> = missing.iter().map(|(t, _)| *t).collect();
            eprintln!(
                "xtask: missing {} and not root, so not installing them.\n  \
                 install: sudo apt-get install {}\n  \
                 or skip the tests that need them: MESHGATE_SKIP_NETNS=1 (ip, tcpdump, root), \
                 MESHGATE_SKIP_CONSUL=1 (the Consul CA test), MESHGATE_SKIP_IMAGE=1 (podman, \
                 runc, mmdebstrap, root) and MESHGATE_SKIP_PROMETHEUS=1 (prometheus, promtool)",
                tools.join(", "),
                packages.join(" ")
            );
        }
    }
    // The shipped plugins are built from source for Wasm by crates/plugin/build.rs.
    run(Command::new("rustup").args(["target", "add", "wasm32-unknown-unknown"]))?;
    // A real Consul agent (1.8.7, Debian 11's package) for crates/meshgate/tests/consul.rs.
    if env::var_os("MESHGATE_SKIP_CONSUL").is_some() {
        println!("MESHGATE_SKIP_CONSUL set: not installing Consul");
    } else {
        run(Command::new("sh").args(["scripts/install-consul.sh", "target/tools"]))
            .map_err(|e| {
                Error::Missing(format!(
                    "{e}\n  installing Consul 1.8.7 needs apt; MESHGATE_SKIP_CONSUL=1 skips its test"
                ))
            })?;
    }
    Ok(())
}

/// The README's test command: installs what the tests need, builds the image the container tests run
/// and checks deploy/, then runs every test. glommio locks memory for its io_uring rings, so the tests
/// run under a raised `ulimit -l` where the limit allows it.
fn test(extra: &[OsString]) -> Result<(), Error> {
    install()?;
    image()?;
    deploy_check()?;
    cargo_test(extra)
}

/// `cargo test --workspace --locked` with the image named for the container tests.
fn cargo_test(extra: &[OsString]) -> Result<(), Error> {
    section("test: cargo test --workspace --locked");
    run(Command::new("bash")
        .arg("-c")
        .arg("ulimit -l unlimited 2>/dev/null || ulimit -l 65536 2>/dev/null || true; exec \"$@\"")
        .arg("xtask-test")
        .arg(cargo())
        .args(["test", "--workspace", "--locked"])
        .args(extra)
        .env("MESHGATE_IMAGE", IMAGE))
}

/// The container image as CI builds it: the release binary, stripped (its debug info beside it in
/// target/image/), on a base made from Debian's packages (no registry needed), through the
/// Dockerfile's `prebuilt` target. `MESHGATE_SKIP_IMAGE=1` skips it (and the tests that run it).
fn image() -> Result<(), Error> {
    if env::var_os("MESHGATE_SKIP_IMAGE").is_some() {
        println!("MESHGATE_SKIP_IMAGE set: not building the image");
        return Ok(());
    }
    for tool in ["podman", "runc", "mmdebstrap", "objcopy"] {
        if !on_path(tool) {
            return Err(Error::Missing(format!(
                "`{tool}` is missing: the image needs podman, runc, mmdebstrap and binutils \
                 (`cargo xtask install` installs them as root); MESHGATE_SKIP_IMAGE=1 skips the image"
            )));
        }
    }
    let mut took = Vec::new();
    let mut step = |name: &'static str, f: &mut dyn FnMut() -> Result<(), Error>| {
        let start = Instant::now();
        let r = f();
        took.push((name, start.elapsed().as_secs_f64()));
        r
    };
    step("release build", &mut || {
        section("image: the release binary");
        run(Command::new(cargo()).args(["build", "--release", "--locked", "-p", "meshgate"]))
    })?;
    step("strip", &mut || {
        section("image: strip (debug info kept in target/image/meshgate.debug)");
        let built = target_dir().join("release/meshgate");
        std::fs::create_dir_all("target/image").map_err(|source| Error::Io {
            path: "target/image".into(),
            source,
        })?;
        run(Command::new("objcopy")
            .args(["--only-keep-debug"])
            .arg(&built)
            .arg(STAGED_DEBUG))?;
        run(Command::new("objcopy")
            .arg("--strip-all")
            .arg(format!("--add-gnu-debuglink={STAGED_DEBUG}"))
            .arg(&built)
            .arg(STAGED_BINARY))
    })?;
    step("base", &mut base_image)?;
    step("podman build", &mut || {
        section("image: podman build --target prebuilt");
        run(Command::new("podman").args([
            "build",
            "--runtime",
            "runc",
            "--format",
            "docker",
            "--target",
            "prebuilt",
            "--build-arg",
            &format!("BASE={BASE_IMAGE}"),
            "--tag",
            IMAGE,
            ".",
        ]))
    })?;
    let size = Command::new("podman")
        .args(["image", "inspect", "--format", "{{.Size}}", IMAGE])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let stripped = std::fs::metadata(STAGED_BINARY).map_or(0, |m| m.len());
    println!(
        "\n{IMAGE}: {:.1} MB (binary {:.1} MB stripped)",
        size.parse::<f64>().unwrap_or(0.0) / 1e6,
        stripped as f64 / 1e6
    );
    for (name, secs) in took {
        println!("  {name:<14} {secs:>6.1} s");
    }
    Ok(())
}

/// The image's base, `localhost/meshgate-base:trixie`, made from Debian's packages by mmdebstrap (no
/// registry needed) and imported into podman; the tarball is cached in target/tools/image/.
fn base_image() -> Result<(), Error> {
    let present = Command::new("podman")
        .args(["image", "exists", BASE_IMAGE])
        .status()
        .is_ok_and(|s| s.success());
    if present {
        println!("{BASE_IMAGE} present");
        return Ok(());
    }
    section("image: the base, from Debian's packages");
    if !Path::new(BASE_TARBALL).is_file() {
        let partial = format!("{BASE_TARBALL}.partial");
        std::fs::create_dir_all("target/tools/image").map_err(|source| Error::Io {
            path: "target/tools/image".into(),
            source,
        })?;
        run(Command::new("mmdebstrap").args([
            "--variant=minbase",
            "--format=tar",
            BASE_RELEASE,
            &partial,
        ]))?;
        std::fs::rename(&partial, BASE_TARBALL).map_err(|source| Error::Io {
            path: BASE_TARBALL.into(),
            source,
        })?;
    }
    run(Command::new("podman").args(["import", BASE_TARBALL, BASE_IMAGE]))
}

/// deploy/check.py in a venv with the pinned validators from PyPI: the Kubernetes manifests against
/// the API's schemas, the Nomad job parsed, both held to the image's contract, and their gateway
/// configs through `meshgate check` when the release binary is built.
fn deploy_check() -> Result<(), Error> {
    section("deploy-check: deploy/ (kubernetes-validate, python-hcl2)");
    let python = deploy_venv()?;
    let mut cmd = Command::new(&python);
    cmd.arg("deploy/check.py");
    let binary = target_dir().join("release/meshgate");
    if binary.is_file() {
        cmd.arg(binary);
    } else {
        println!("(no release binary: the manifests' gateway configs are not run through `meshgate check`)");
    }
    run(&mut cmd)
}

/// deploy/check.py's venv with the pinned validators (made again when deploy/requirements.txt changes);
/// returns its Python.
fn deploy_venv() -> Result<PathBuf, Error> {
    let python = Path::new(DEPLOY_VENV).join("bin/python");
    let stamp = Path::new(DEPLOY_VENV).join("requirements.txt");
    let wanted = std::fs::read_to_string(DEPLOY_REQUIREMENTS).map_err(|source| Error::Io {
        path: DEPLOY_REQUIREMENTS.into(),
        source,
    })?;
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        // Debian's Python (python3-venv) where it is installed, else the PATH's.
        let system = if Path::new("/usr/bin/python3").is_file() {
            "/usr/bin/python3"
        } else {
            "python3"
        };
        run(Command::new(system).args(["-m", "venv", "--clear", DEPLOY_VENV])).map_err(|e| {
            Error::Missing(format!(
                "{e}\n  the venv needs python3-venv (`cargo xtask install` installs it as root)"
            ))
        })?;
        run(Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--requirement",
            DEPLOY_REQUIREMENTS,
        ]))?;
        std::fs::write(&stamp, wanted).map_err(|source| Error::Io {
            path: stamp.clone(),
            source,
        })?;
    }
    Ok(python)
}

/// Where cargo puts its outputs: `CARGO_TARGET_DIR` when set, else `target`.
fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from)
}

/// Whether a Debian package is installed (dpkg-query says `install ok installed`).
fn deb_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("ok installed"))
}

/// Format, lints and the documentation, all with warnings as errors.
fn lint() -> Result<(), Error> {
    ensure_components()?;
    section("lint: rustfmt");
    run(Command::new(cargo()).args(["fmt", "--all", "--check"]))?;
    run(Command::new(cargo()).args([
        "fmt",
        "--all",
        "--check",
        "--manifest-path",
        "plugins/Cargo.toml",
    ]))?;
    section("lint: no hand-written unsafe in plugins/");
    no_unsafe_in("plugins")?;
    section("lint: clippy");
    run(Command::new(cargo()).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]))?;
    section("lint: rustdoc");
    run(Command::new(cargo())
        .args(["doc", "--workspace", "--no-deps", "--locked"])
        .env("RUSTDOCFLAGS", "-D warnings"))
}

/// cargo-deny over both workspaces (the gateway's and the shipped plugins', which are embedded in the
/// binary) with the one `deny.toml`. The RustSec advisory database is a git repository: on a machine that
/// cannot fetch it (this project's CI reaches package registries only) the advisories check is skipped,
/// loudly, unless `MESHGATE_REQUIRE_ADVISORIES=1` makes that an error.
fn deny() -> Result<(), Error> {
    ensure_cargo_deny()?;
    let manifests = ["Cargo.toml", "plugins/Cargo.toml"];
    for manifest in manifests {
        section(&format!("deny: licenses, bans, sources ({manifest})"));
        let mut cmd = Command::new(cargo());
        cmd.args([
            "deny",
            "--locked",
            "--config",
            "deny.toml",
            "--manifest-path",
            manifest,
        ])
        .arg("check");
        if manifest != "Cargo.toml" {
            // deny.toml's exceptions are written for the gateway's larger graph; the plugins' smaller
            // one not needing some of them is no news.
            for lint in [
                "unmatched-skip",
                "unnecessary-skip",
                "license-not-encountered",
                "license-exception-not-encountered",
            ] {
                cmd.args(["--allow", lint]);
            }
        }
        run(cmd.args(["licenses", "bans", "sources"]))?;
    }
    section("deny: advisories");
    let fetched = run(Command::new(cargo()).args(["deny", "fetch", "db"])).is_ok();
    if !fetched {
        let why = "the RustSec advisory database (a git repository) could not be fetched from here";
        if env::var_os("MESHGATE_REQUIRE_ADVISORIES").is_some() {
            return Err(Error::Missing(format!(
                "{why}, and MESHGATE_REQUIRE_ADVISORIES is set"
            )));
        }
        banner(&format!(
            "ADVISORIES NOT CHECKED: {why}.\n\
             Licences, bans and sources were checked. Run `cargo xtask deny` where the database \
             can be fetched to check advisories too."
        ));
        return Ok(());
    }
    for manifest in manifests {
        run(Command::new(cargo())
            .args(["deny", "--locked", "--offline", "--config", "deny.toml"])
            .args(["--manifest-path", manifest, "check", "advisories"]))?;
    }
    Ok(())
}

/// The vendored glommio: the tree is upstream 0.9.0 plus the patch series, and glommio's own tests pass.
fn vendor() -> Result<(), Error> {
    section("vendor");
    for script in VENDOR_SCRIPTS {
        if !Path::new(script).is_file() {
            return Err(Error::Missing(format!(
                "{script} is missing: the vendored-glommio checks cannot run (see vendor/README.md)"
            )));
        }
        run(Command::new("bash").arg(script))?;
    }
    Ok(())
}

/// One pass of each micro-benchmark: proves they still build and run, measures nothing.
fn bench_smoke() -> Result<(), Error> {
    section("bench-smoke: one pass of each micro-benchmark");
    // In the test profile, not the bench profile: the pass measures nothing, and the test build's
    // artifacts are already there, where a bench-profile build compiled wasmtime once more (~5 min).
    // `--workspace --bench '*'`: every bench target, with the workspace's feature resolution — naming
    // the packages (`-p`) resolved wasmtime's features apart from the test step's and rebuilt it
    // (~4 min).
    run(Command::new(cargo()).args([
        "test",
        "--locked",
        "--workspace",
        "--bench",
        "*",
        "--",
        "--test",
    ]))
}

/// Everything CI runs, in CI's order, with how long each step took.
fn ci() -> Result<(), Error> {
    type Step = fn() -> Result<(), Error>;
    // The image's release build shares no artifact with bench-smoke's (cargo hashes the bench profile
    // apart: wasmtime is compiled again, measured), so the order is the natural one.
    let steps: [(&str, Step); 8] = [
        ("install", install),
        ("lint", lint),
        ("deny", deny),
        ("vendor", vendor),
        ("image", image),
        ("deploy-check", deploy_check),
        ("test", || cargo_test(&[])),
        ("bench-smoke", bench_smoke),
    ];
    let mut took = Vec::new();
    let mut preparing = None;
    let result = steps.into_iter().try_for_each(|(name, step)| {
        if name == "deny" {
            // cargo-deny is needed from here on; the rest of what `prepare` makes, later.
            let start = Instant::now();
            if let Some(child) = preparing.take() {
                join_prepare(child);
            }
            took.push(("(prepare)", start.elapsed().as_secs()));
        }
        let start = Instant::now();
        let r = step();
        took.push((name, start.elapsed().as_secs()));
        if name == "install" && r.is_ok() {
            preparing = spawn_prepare();
        }
        r
    });
    println!("\n== ci: seconds per step (`(prepare)`: waiting for it after lint)");
    for (name, secs) in &took {
        println!("  {name:<12} {secs:>5}");
    }
    result
}

/// What the later steps need that waits on the network or builds a tool, not on our code: the image's
/// base (mmdebstrap fetches Debian's packages), deploy-check's venv (pip) and cargo-deny (`cargo
/// install`). `ci` runs it in a child process beside `lint`, whose compilation leaves a core idle at
/// times; each piece is also made on demand by the step that needs it, so a failure here only costs time.
fn prepare() -> Result<(), Error> {
    let mut result = Ok(());
    let mut keep = |r: Result<(), Error>| {
        if let Err(e) = r {
            eprintln!("xtask: prepare: {e}");
            result = Err(e);
        }
    };
    if env::var_os("MESHGATE_SKIP_IMAGE").is_none() && on_path("podman") && on_path("mmdebstrap") {
        keep(base_image());
    }
    keep(deploy_venv().map(drop));
    keep(ensure_cargo_deny());
    result
}

/// Where `ci` keeps the background `prepare`'s output.
const PREPARE_LOG: &str = "target/tools/prepare.log";

/// Starts `cargo xtask prepare` as a child writing to [`PREPARE_LOG`]; `None` when it cannot start (the
/// steps then make what they need themselves).
fn spawn_prepare() -> Option<std::process::Child> {
    let exe = env::current_exe().ok()?;
    std::fs::create_dir_all("target/tools").ok()?;
    let log = std::fs::File::create(PREPARE_LOG).ok()?;
    let err = log.try_clone().ok()?;
    println!("\n== prepare: started beside lint (output in {PREPARE_LOG})");
    Command::new(exe)
        .arg("prepare")
        .stdout(log)
        .stderr(err)
        .spawn()
        .ok()
}

/// Waits for the background `prepare` and shows its output.
fn join_prepare(mut child: std::process::Child) {
    let status = child.wait();
    section("prepare (ran beside lint)");
    print!(
        "{}",
        std::fs::read_to_string(PREPARE_LOG).unwrap_or_default()
    );
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => println!("prepare failed ({s}): the steps that need its pieces make them again"),
        Err(e) => println!("prepare: {e}: the steps that need its pieces make them"),
    }
}

/// The plugins cannot take `unsafe_code = "forbid"` as the other crates do: wit-bindgen's `export!` macro
/// expands its ABI glue (unsafe, by nature) inside the plugin crate, where the lint counts it as ours and
/// no attribute on the macro call can scope it. So the rule is checked on the sources instead: no
/// `unsafe` token in any `.rs` file under `dir` (comments included, to keep the check simple).
fn no_unsafe_in(dir: &str) -> Result<(), Error> {
    let mut pending = vec![PathBuf::from(dir)];
    let mut found = Vec::new();
    while let Some(path) = pending.pop() {
        let io_err = |source| Error::Io {
            path: path.clone(),
            source,
        };
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            for entry in std::fs::read_dir(&path).map_err(io_err)? {
                pending.push(entry.map_err(io_err)?.path());
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).map_err(io_err)?;
            for (n, line) in text.lines().enumerate() {
                let word = line
                    .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .any(|w| w == "unsafe");
                if word {
                    found.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                }
            }
        }
    }
    if found.is_empty() {
        println!("none");
        Ok(())
    } else {
        Err(Error::Policy(format!(
            "unsafe code in the plugins (only wit-bindgen's generated glue may have it):\n  {}",
            found.join("\n  ")
        )))
    }
}

/// rustfmt and clippy come with a toolchain's default profile but not its minimal one.
fn ensure_components() -> Result<(), Error> {
    let have = |sub: &str| {
        Command::new(cargo())
            .args([sub, "--version"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !have("fmt") || !have("clippy") {
        run(Command::new("rustup").args(["component", "add", "rustfmt", "clippy"]))?;
    }
    Ok(())
}

/// Installs the pinned cargo-deny when it is missing (or another version is installed).
fn ensure_cargo_deny() -> Result<(), Error> {
    let installed = Command::new(cargo())
        .args(["deny", "--version"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    match installed {
        Some(v) if v.ends_with(CARGO_DENY_VERSION) => return Ok(()),
        Some(v) => println!("found {v}; installing the pinned {CARGO_DENY_VERSION}"),
        None => println!("cargo-deny is missing; installing {CARGO_DENY_VERSION} (a few minutes)"),
    }
    // Built in cargo's own temporary directory: a shared CARGO_TARGET_DIR would hold its lock meanwhile.
    // Unoptimised: its build takes 191 s of CPU here (the optimised one made a fresh CI machine wait
    // ~4.6 min on 2 cores), and it still checks our graphs in ~2 s.
    run(Command::new(cargo())
        .args([
            "install",
            "--locked",
            "cargo-deny",
            "--version",
            CARGO_DENY_VERSION,
        ])
        .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "0")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env_remove("CARGO_TARGET_DIR"))
}

/// The cargo that started the runner (the same toolchain), else the one on the PATH.
fn cargo() -> OsString {
    env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// Runs a command to completion after echoing it; a non-zero exit is an error.
fn run(cmd: &mut Command) -> Result<(), Error> {
    let what = describe(cmd);
    println!("+ {what}");
    // `cargo run` hands its package's variables to the runner; the commands run as if from a shell.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || key == "CARGO_CRATE_NAME"
            || key == "CARGO_BIN_NAME"
        {
            cmd.env_remove(key.as_ref());
        }
    }
    let status = cmd.status().map_err(|source| Error::Spawn {
        what: what.clone(),
        source,
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Failed { what, status })
    }
}

fn describe(cmd: &Command) -> String {
    let program = Path::new(cmd.get_program())
        .file_name()
        .unwrap_or(cmd.get_program())
        .to_string_lossy()
        .into_owned();
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    std::iter::once(program)
        .chain(args)
        .collect::<Vec<_>>()
        .join(" ")
}

fn on_path(tool: &str) -> bool {
    env::var_os("PATH")
        .is_some_and(|paths| env::split_paths(&paths).any(|dir: PathBuf| dir.join(tool).is_file()))
}

/// Whether the runner is root (apt-get works), asked of `id` since std has no geteuid.
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn section(title: &str) {
    println!("\n== {title}");
}

fn banner(text: &str) {
    let rule = "!".repeat(100);
    eprintln!("\n{rule}\n{text}\n{rule}\n");
}
