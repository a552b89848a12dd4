//! The container image (`Dockerfile`), checked without a container runtime: the files it copies exist
//! and are not excluded from the build context, its entry point is the binary the build stage installs,
//! its default command runs the shipped config and routes a mounted catalog (in a network namespace, as
//! `--network host` would on a gateway host, since it binds all interfaces), and the two host settings a
//! container most often lacks — io_uring (blocked by Docker's default seccomp profile) and the
//! locked-memory limit — are reported plainly instead of as a crash.
// The child-side set-up (seccomp filter, resource limit, dropping privileges) runs between fork and
// exec, which only `pre_exec` and raw system calls can do.
#![allow(unsafe_code)]

mod common;

use common::{http_get, in_ns, is_root, meshgate_ok, Proc, TempDir, TD};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// One Dockerfile instruction: keyword (upper case) and its arguments, continuations joined.
fn instructions() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).expect("Dockerfile");
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if current.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                let (keyword, args) = current.split_once(' ').unwrap_or((&current, ""));
                out.push((keyword.to_uppercase(), args.trim().to_owned()));
                current.clear();
            }
        }
    }
    out
}

fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("not exec form ({e}): {args}"))
}

/// The image's default command as it would run: ENTRYPOINT + CMD, with image paths from
/// `COPY <repo dir>/ <image dir>/` mapped to `root`, where those directories are copied.
fn image_command(root: &Path) -> Vec<String> {
    let mut argv = Vec::new();
    let mut copies = Vec::new();
    for (keyword, args) in instructions() {
        match keyword.as_str() {
            "ENTRYPOINT" => argv = exec_form(&args),
            "CMD" => argv.extend(exec_form(&args)),
            "COPY" if !args.starts_with("--") => {
                let parts: Vec<&str> = args.split_whitespace().collect();
                // Directories into the final image (absolute destinations), not the build stage's
                // `COPY . .` nor the binary staged for the prebuilt target.
                if let [src, dst] = parts[..] {
                    if dst.starts_with('/') && src.ends_with('/') {
                        copies.push((src.to_owned(), dst.to_owned()));
                    }
                }
            }
            _ => {}
        }
    }
    assert_eq!(
        argv.first().map(String::as_str),
        Some("/usr/local/bin/meshgate")
    );
    argv[0] = env!("CARGO_BIN_EXE_meshgate").to_owned();
    for (src, dst) in &copies {
        let inside = root.join(dst.trim_start_matches('/'));
        copy_dir(&repo().join(src), &inside);
        for arg in &mut argv[1..] {
            if let Some(rest) = arg.strip_prefix(dst.as_str()) {
                *arg = inside.join(rest).display().to_string();
            }
        }
    }
    argv
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

#[test]
fn dockerfile_matches_the_repository() {
    let ignored: Vec<String> = std::fs::read_to_string(repo().join(".dockerignore"))
        .expect(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    let all = instructions();
    // What the build stage produces (`install ... /out/meshgate`, `objcopy ... /out/meshgate.debug`),
    // and the stages declared so far.
    let mut installed = Vec::new();
    let mut stages: Vec<String> = Vec::new();
    for (keyword, args) in &all {
        if keyword == "FROM" {
            if let Some((_, name)) = args.split_once(" AS ") {
                stages.push(name.trim().to_owned());
            }
        }
        if keyword == "RUN" {
            installed.extend(
                args.split_whitespace()
                    .filter(|w| w.starts_with("/out/"))
                    .map(str::to_owned),
            );
        }
        if keyword != "COPY" {
            continue;
        }
        let parts: Vec<&str> = args.split_whitespace().collect();
        if let Some(from) = parts.first().and_then(|p| p.strip_prefix("--from=")) {
            assert!(
                stages.iter().any(|s| s == from),
                "COPY --from={from}: no such earlier stage"
            );
            if from == "build" {
                assert!(
                    installed.iter().any(|i| i == parts[1]),
                    "COPY --from=build {} is not what the build stage installs ({installed:?})",
                    parts[1]
                );
            }
            continue;
        }
        for src in &parts[..parts.len() - 1] {
            if *src == "." {
                continue;
            }
            // The prebuilt binary is staged by `cargo xtask image`; the context must let it in.
            if src.starts_with("target/image/") {
                assert!(
                    ignored.iter().any(|i| i.strip_prefix('!') == Some(*src)),
                    "COPY {src}: .dockerignore excludes target/ and has no `!{src}`"
                );
                continue;
            }
            assert!(
                repo().join(src).exists(),
                "COPY {src}: not in the repository"
            );
            let src = src.trim_end_matches('/');
            assert!(
                !ignored
                    .iter()
                    .any(|i| src == i || src.starts_with(&format!("{i}/"))),
                "COPY {src} is excluded by .dockerignore"
            );
        }
    }
    // The default config is valid, and the ports the image exposes are the ones it listens on.
    let root = TempDir::new("image");
    let argv = image_command(&root.0);
    let config = argv
        .iter()
        .skip_while(|a| *a != "--config")
        .nth(1)
        .expect("CMD names --config");
    meshgate_ok(&["check", config]);
    let text = std::fs::read_to_string(config).expect("config");
    let exposed: Vec<String> = all
        .iter()
        .filter(|(k, _)| k == "EXPOSE")
        .flat_map(|(_, a)| a.split_whitespace().map(str::to_owned))
        .collect();
    assert!(!exposed.is_empty(), "the image exposes no port");
    // The admin port binds the host's loopback (docs/container.md); EXPOSE still documents it for a
    // bridge network, where the operator binds it on the container's interfaces and publishes it.
    for port in &exposed {
        assert!(
            text.contains(&format!("0.0.0.0:{port}\""))
                || text.contains(&format!("admin = \"127.0.0.1:{port}\"")),
            "EXPOSE {port}: the default config does not listen on it"
        );
    }
}

#[test]
fn image_default_command_routes_a_mounted_catalog() {
    if common::skip_netns(&["ip"]) {
        return;
    }
    let netns = common::Netns::new(format!("mg{}-image", std::process::id() % 100_000));
    let ns = netns.name.clone();

    let root = TempDir::new("image-root");
    let argv = image_command(&root.0);
    // A TLS backend standing in for api's sidecar, inside the namespace.
    let pki = meshgate_tlskit::Pki::new("test CA").expect("ca");
    let name = format!("api.default.dc1.internal.{TD}");
    let identity = pki.issue(&[&name]).expect("issue");
    let backend = in_ns(&ns, move || {
        meshgate_tlskit::Backend::start("api", "127.0.0.1:0".parse().expect("addr"), identity)
            .expect("backend")
    });
    // `-v my-catalog:/etc/meshgate/catalog`: a registration appears in the mounted directory.
    let catalog = root.0.join("etc/meshgate/catalog");
    std::fs::write(
        catalog.join("api.hcl"),
        format!(
            "service {{\n  name = \"api\"\n  port = 9090\n  connect {{ sidecar_service {{\n    address = \"127.0.0.1\"\n    port = {}\n  }} }}\n}}\n",
            backend.addr().port()
        ),
    )
    .expect("registration");

    let args: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut gw = Proc::start_in("image command", Some(&ns), &args);
    let _dump = common::DumpOnPanic::new(&[&gw]);
    let routed = {
        let name = name.clone();
        let route = name.clone();
        common::wait_admin(
            &ns,
            "127.0.0.1:19000",
            "/routes",
            "a route for api",
            move |r| r.contains(&route),
        );
        in_ns(&ns, move || {
            let admin = "127.0.0.1:19000".parse().expect("addr");
            assert_eq!(http_get(admin, "/ready").as_deref(), Some("ready\n"));
            let client = pki.client_config(&["h2"]).expect("client");
            meshgate_tlskit::hello("127.0.0.1:8443".parse().expect("addr"), &name, client)
        })
    };
    assert_eq!(
        routed.expect("routed through the image's gateway"),
        format!("backend=api sni={name} alpn=h2")
    );
    // STOPSIGNAL SIGTERM drains and exits 0.
    gw.stop();
    assert!(gw.wait_exit().success(), "{}", gw.log());
    // The backend stops by connecting to itself: from inside its namespace.
    in_ns(&ns, move || drop(backend));
}

/// Runs `binary` with `args` under `setup` (run in the child before exec); its exit code and stderr.
fn run_with(
    binary: &str,
    args: &[&str],
    setup: impl Fn() -> std::io::Result<()> + Send + Sync + 'static,
) -> (i32, String) {
    let mut cmd = Command::new(binary);
    cmd.args(args)
        .current_dir("/")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: `setup` only makes async-signal-safe system calls (prctl, setrlimit, setgid, setuid).
    unsafe { cmd.pre_exec(setup) };
    let child = cmd.spawn().expect("spawn");
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn demo_config(name: &str) -> String {
    repo().join("configs/demo").join(name).display().to_string()
}

/// Installs a seccomp filter that fails io_uring_setup/enter/register with EPERM, as Docker's default
/// profile does (the three share numbers 425–427 on every architecture).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn block_io_uring() -> std::io::Result<()> {
    const LD_NR: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS, offset 0: seccomp_data.nr
    const JEQ: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET: u16 = 0x06; // BPF_RET | BPF_K
    const ALLOW: u32 = 0x7fff_0000; // SECCOMP_RET_ALLOW
    const EPERM: u32 = 0x0005_0000 | libc::EPERM as u32; // SECCOMP_RET_ERRNO | EPERM
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let filter = [
        op(LD_NR, 0, 0, 0),
        op(JEQ, 3, 0, 425),
        op(JEQ, 2, 0, 426),
        op(JEQ, 1, 0, 427),
        op(RET, 0, 0, ALLOW),
        op(RET, 0, 0, EPERM),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: plain prctl calls; `prog` and `filter` outlive them (the kernel copies the program).
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
            ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[test]
fn io_uring_blocked_by_seccomp_is_reported_plainly() {
    let sysctl_off = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .is_ok_and(|s| s.trim() != "0");
    for args in [
        vec!["gateway", "--config", &demo_config("dc1-gateway.toml")],
        vec!["sidecar", "--config", &demo_config("web-sidecar.toml")],
        vec!["demo", "--once"],
    ] {
        let (code, stderr) = run_with(env!("CARGO_BIN_EXE_meshgate"), &args, block_io_uring);
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert!(
            stderr.contains("io_uring is unavailable to this process")
                && (sysctl_off || stderr.contains("seccomp")),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    // `check` needs no io_uring.
    let (code, stderr) = run_with(
        env!("CARGO_BIN_EXE_meshgate"),
        &["check", &demo_config("dc1-gateway.toml")],
        block_io_uring,
    );
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn locked_memory_limit_below_glommios_floor_is_reported_plainly() {
    if !is_root() {
        eprintln!("not root: cannot drop to an unprivileged user to test RLIMIT_MEMLOCK; skipped");
        return;
    }
    // An unprivileged user (no CAP_IPC_LOCK) with a 64 KiB limit it may not raise: Docker's old default.
    let drop_privileges = || {
        let limit = libc::rlimit {
            rlim_cur: 64 * 1024,
            rlim_max: 64 * 1024,
        };
        // SAFETY: setrlimit reads the struct we own; setgroups/setgid/setuid take plain integers.
        unsafe {
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) != 0
                || libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(65534) != 0
                || libc::setuid(65534) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // A config the unprivileged user can read, on loopback ports of its own.
    let dir = TempDir::new("memlock");
    let config = dir.0.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nlisten = [\"127.0.0.1:{}\"]\n\n[[routes]]\nsni = \"a.example\"\nendpoints = [\"127.0.0.1:9\"]\n",
            common::free_port()
        ),
    )
    .expect("config");
    // The build tree may not be reachable for that user (a checkout under /root): run a copy.
    let binary = dir.0.join("meshgate");
    std::fs::copy(env!("CARGO_BIN_EXE_meshgate"), &binary).expect("copy binary");
    for path in [&dir.0, &config, &binary] {
        let mode = if path.is_dir() || *path == binary {
            0o755
        } else {
            0o644
        };
        std::fs::set_permissions(
            path,
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(mode),
        )
        .expect("chmod");
    }
    let (code, stderr) = run_with(
        &binary.display().to_string(),
        &["gateway", "--config", &config.display().to_string()],
        drop_privileges,
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("RLIMIT_MEMLOCK") && stderr.contains("--ulimit memlock"),
        "{stderr}"
    );
}

/// The seccomp profile we ship (deploy/seccomp/meshgate.json; the Kubernetes manifests use it as a
/// `Localhost` profile) is a default-deny profile that allows the three io_uring calls: nothing wider.
#[test]
fn shipped_seccomp_profile_allows_io_uring_and_denies_by_default() {
    let text =
        std::fs::read_to_string(repo().join("deploy/seccomp/meshgate.json")).expect("profile");
    let profile: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(
        profile["defaultAction"], "SCMP_ACT_ERRNO",
        "not default-deny"
    );
    let allowed: Vec<&str> = profile["syscalls"]
        .as_array()
        .expect("syscalls")
        .iter()
        .filter(|r| r["action"] == "SCMP_ACT_ALLOW")
        .flat_map(|r| r["names"].as_array().into_iter().flatten())
        .filter_map(|n| n.as_str())
        .collect();
    for call in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
        assert!(allowed.contains(&call), "{call} not allowed");
    }
    // What the data plane uses besides: splice for the relay, the usual socket calls.
    for call in [
        "splice",
        "pipe2",
        "accept4",
        "connect",
        "epoll_wait",
        "mlock",
        "sched_setaffinity",
    ] {
        assert!(allowed.contains(&call), "{call} not allowed");
    }
}
