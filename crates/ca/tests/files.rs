//! Writing a CA's files over whatever an unlucky directory holds: a world-readable key is replaced by a
//! 0600 one, a certificate ends 0644, and a symbolic link, a FIFO or a directory at a target name is
//! refused before anything is written (the old code blocked forever opening the FIFO, and wrote through
//! the link). Nothing but the files is left behind.

use meshgate_ca::{write_file, Authority};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("meshgate-ca-files-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .expect("stat")
        .permissions()
        .mode()
        & 0o7777
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn an_existing_key_is_replaced_0600_and_a_certificate_0644() {
    let d = Scratch::new("modes");
    for (name, secret) in [("key.pem", true), ("cert.pem", false)] {
        let path = d.0.join(name);
        std::fs::write(&path, "old").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        write_file(&d.0, name, "new", secret).expect("write_file");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "new");
        assert_eq!(mode(&path), if secret { 0o600 } else { 0o644 }, "{name}");
    }
    assert_eq!(names(&d.0), ["cert.pem", "key.pem"]);
}

/// Puts something at a path.
type Plant<'a> = dyn Fn(&Path) + 'a;

#[test]
fn links_fifos_and_directories_at_a_target_are_refused_before_anything_is_written() {
    let d = Scratch::new("refused");
    let root = Authority::init(None).expect("root");
    let target = d.0.join("target");
    std::fs::write(&target, "untouched").expect("write");

    let make: [(&str, &Plant<'_>); 3] = [
        ("symbolic link", &|p| symlink(&target, p).expect("symlink")),
        ("fifo", &|p| {
            std::process::Command::new("mkfifo")
                .arg(p)
                .status()
                .expect("mkfifo");
        }),
        ("directory", &|p| std::fs::create_dir(p).expect("mkdir")),
    ];
    for (what, plant) in make {
        let dir = d.0.join(what.replace(' ', "-"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        plant(&dir.join("key.pem"));
        let err = root.save(&dir).err().map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|e| e.contains("key.pem")),
            "{what}: {err:?}"
        );
        assert_eq!(names(&dir), ["key.pem"], "{what}: wrote something");
    }
    assert_eq!(std::fs::read_to_string(&target).expect("read"), "untouched");
}
