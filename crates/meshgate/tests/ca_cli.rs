//! `meshgate ca` through the real binary, as an unlucky operator (or a hostile local user) would run it:
//! key files end 0600 whatever was there before, certificates 0644; a symbolic link where a file or a
//! directory is written is refused and what it points at is left alone; nothing is left behind but the
//! files themselves (every file is written to a temporary in its directory and renamed over the old one);
//! and every `--hours` is either in range or refused with a message naming the flag, never a panic.

mod common;

use common::{meshgate_ok, TempDir};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

fn meshgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .args(args)
        .output()
        .expect("run meshgate")
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A file with `text` and exactly `mode` (whatever the umask).
fn plant(path: &Path, text: &str, mode: u32) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn init(out: &Path) -> Output {
    meshgate(&["ca", "init", "--out", s(out)])
}

fn issue(ca: &Path, out: &Path, hours: &str) -> Output {
    meshgate(&[
        "ca",
        "issue",
        "--ca",
        s(ca),
        "--service",
        "api",
        "--datacenter",
        "dc1",
        "--hours",
        hours,
        "--out",
        s(out),
    ])
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Requires a refusal: a failure exit that is not a panic (Rust's panic exit code is 101).
fn refused(out: &Output, what: &str) -> String {
    let err = stderr(out);
    assert!(!out.status.success(), "{what}: accepted");
    assert_ne!(out.status.code(), Some(101), "{what}: panicked: {err}");
    assert!(!err.contains("panicked"), "{what}: panicked: {err}");
    err
}

#[test]
fn existing_world_readable_keys_end_0600_and_certificates_0644() {
    let tmp = TempDir::new("ca-modes");
    let root = tmp.0.join("root");
    let leaf = tmp.0.join("leaf");
    // What an earlier run under a lax umask (or a careless copy) leaves: every file 0666, the certificates
    // 0600.
    for (dir, files) in [
        (&root, &["cert.pem", "chain.pem", "roots.pem"][..]),
        (&leaf, &["cert.pem", "roots.pem"][..]),
    ] {
        plant(&dir.join("key.pem"), "old key\n", 0o666);
        for f in files {
            plant(&dir.join(f), "old\n", 0o600);
        }
    }

    meshgate_ok(&["ca", "init", "--out", s(&root)]);
    assert_eq!(mode(&root.join("key.pem")), 0o600, "root key");
    for f in ["cert.pem", "chain.pem", "roots.pem"] {
        assert_eq!(mode(&root.join(f)), 0o644, "root {f}");
    }
    let key = std::fs::read_to_string(root.join("key.pem")).expect("key");
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
    assert_eq!(
        names(&root),
        ["cert.pem", "chain.pem", "key.pem", "roots.pem"],
        "no temporaries left"
    );

    let out = issue(&root, &leaf, "72");
    assert!(out.status.success(), "issue: {}", stderr(&out));
    assert_eq!(mode(&leaf.join("key.pem")), 0o600, "leaf key");
    for f in ["cert.pem", "roots.pem"] {
        assert_eq!(mode(&leaf.join(f)), 0o644, "leaf {f}");
    }
    assert_eq!(names(&leaf), ["cert.pem", "key.pem", "roots.pem"]);

    // Issuing again over the files just written (the rotation path) keeps the modes and leaves nothing.
    let before = std::fs::read_to_string(leaf.join("key.pem")).expect("key");
    let out = issue(&root, &leaf, "1");
    assert!(out.status.success(), "reissue: {}", stderr(&out));
    assert_ne!(
        std::fs::read_to_string(leaf.join("key.pem")).expect("key"),
        before
    );
    assert_eq!(mode(&leaf.join("key.pem")), 0o600);
    assert_eq!(names(&leaf), ["cert.pem", "key.pem", "roots.pem"]);
}

#[test]
fn a_symlinked_key_is_refused_and_its_target_untouched() {
    let tmp = TempDir::new("ca-symlink-key");
    let root = tmp.0.join("root");
    meshgate_ok(&["ca", "init", "--out", s(&root)]);
    let target = tmp.0.join("elsewhere/secret.txt");
    plant(&target, "not yours\n", 0o644);

    for (what, dir) in [
        ("init", tmp.0.join("new-root")),
        ("issue", tmp.0.join("leaf")),
    ] {
        std::fs::create_dir_all(&dir).expect("mkdir");
        symlink(&target, dir.join("key.pem")).expect("symlink");
        let out = match what {
            "init" => init(&dir),
            _ => issue(&root, &dir, "72"),
        };
        let err = refused(&out, what);
        assert!(
            err.contains("symbolic link") && err.contains("key.pem"),
            "{what}: {err}"
        );
        assert_eq!(
            std::fs::read_to_string(&target).expect("target"),
            "not yours\n",
            "{what}: target written through the link"
        );
        assert_eq!(mode(&target), 0o644, "{what}: target's mode changed");
        // Nothing was written: not the certificates before the key, not a temporary.
        assert_eq!(names(&dir), ["key.pem"], "{what}");
        assert!(std::fs::symlink_metadata(dir.join("key.pem"))
            .expect("link")
            .file_type()
            .is_symlink());
    }

    // A dangling link (the file it names does not exist yet) is no better: it would be created.
    let leaf = tmp.0.join("dangling");
    std::fs::create_dir_all(&leaf).expect("mkdir");
    let ghost = tmp.0.join("elsewhere/ghost.pem");
    symlink(&ghost, leaf.join("key.pem")).expect("symlink");
    refused(&issue(&root, &leaf, "72"), "dangling link");
    assert!(!ghost.exists(), "created through a dangling link");
    assert_eq!(names(&leaf), ["key.pem"]);
}

#[test]
fn a_symlinked_directory_on_the_way_is_refused() {
    let tmp = TempDir::new("ca-symlink-dir");
    let real = tmp.0.join("real");
    std::fs::create_dir_all(&real).expect("mkdir");
    symlink(&real, tmp.0.join("link")).expect("symlink");

    // The output directory itself, and a directory above it, being links.
    for out in [tmp.0.join("link"), tmp.0.join("link/sub/leaf")] {
        let err = refused(&init(&out), "init through a link");
        assert!(err.contains("symbolic link"), "{err}");
        assert!(
            names(&real).is_empty(),
            "{}: wrote {:?}",
            out.display(),
            names(&real)
        );
    }
}

#[test]
fn every_hours_value_is_in_range_or_refused_naming_the_flag() {
    let tmp = TempDir::new("ca-hours");
    let root = tmp.0.join("root");
    meshgate_ok(&["ca", "init", "--out", s(&root)]);

    for hours in [
        "100000000",
        "0",
        "8761",
        "4294967296",
        "18446744073709551615",
        "18446744073709551616",
        "-1",
        "1e9",
        "",
    ] {
        let out = tmp.0.join(format!("leaf-{hours}"));
        let err = refused(&issue(&root, &out, hours), hours);
        assert!(err.contains("--hours"), "{hours}: {err}");
        assert!(!out.exists(), "{hours}: wrote {}", out.display());
    }
    let err = stderr(&issue(&root, &tmp.0.join("big"), "100000000"));
    assert!(err.contains("1..=8760"), "the limits are named: {err}");

    // The limits themselves are accepted.
    for hours in ["1", "8760"] {
        let out = issue(&root, &tmp.0.join(format!("leaf-{hours}")), hours);
        assert!(out.status.success(), "{hours}: {}", stderr(&out));
    }
}
