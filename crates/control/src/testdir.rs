//! Test fixtures: a temporary directory with a copy of the demo's Consul catalog.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The demo's trust domain.
pub(crate) const TD: &str = "11111111-2222-3333-4444-555555555555.consul";

/// A directory removed when dropped.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(what: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "meshgate-control-{what}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    /// Copies `configs/demo/catalog/<dc>` (recursively) to `<self>/catalog`.
    pub(crate) fn with_demo_catalog(what: &str, dc: &str) -> TempDir {
        let t = TempDir::new(what);
        let from = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../configs/demo/catalog")
            .join(dc);
        copy_dir(&from, &t.0.join("catalog"));
        t
    }

    /// Registers a local `db` service (its sidecar on 127.0.0.1:21002) in the copied catalog: a catalog
    /// change that concerns a gateway but not web's sidecar.
    pub(crate) fn register_db(&self) {
        self.write(
            "catalog/db.hcl",
            "service {\n  name = \"db\"\n  port = 5432\n  connect { sidecar_service { port = 21002 } }\n}\n",
        );
    }

    pub(crate) fn write(&self, name: &str, text: &str) {
        let path = self.0.join(name);
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).expect("mkdir");
        }
        std::fs::write(path, text).expect("write");
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read demo catalog") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}
