//! Wakes the control thread when something changes under the directories a polled catalog plugin may
//! read (Linux inotify), so an edit reaches the route table in the time the work takes rather than up to
//! `poll_ms` later. The plugin's poll still does all the reading; this only makes it come sooner. Where
//! inotify cannot watch (a network file system, the per-user watch limit), nothing is lost: the poll
//! alone notices edits, as before.
//!
//! What wakes: a file closed after writing, renamed in or out, deleted, or its attributes changed (a
//! `touch`); a directory made (then watched too). Not a write still in progress (`IN_MODIFY`), nor a
//! new empty file (`IN_CREATE`): the poll would read half a file; nor a hidden name (`.x.tmp` written
//! before it is renamed over `x`, an editor's swap file), which catalogs skip. One wake at a time: after waking, the
//! watcher waits for [`DirWatch::taken`] (the control thread about to poll) before it wakes again, so a
//! burst of edits costs one poll per poll the control thread can run, never a queue of them.

use crate::consul::watches::Waker;
use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags};
use rustix::fd::OwnedFd;
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A running watch; dropping it ends its thread.
pub struct DirWatch {
    pending: Arc<AtomicBool>,
    /// Written on drop: wakes the thread so it returns.
    stop: Arc<OwnedFd>,
}

const WAKING: WatchFlags = WatchFlags::CLOSE_WRITE
    .union(WatchFlags::MOVED_TO)
    .union(WatchFlags::MOVED_FROM)
    .union(WatchFlags::DELETE)
    .union(WatchFlags::ATTRIB)
    // Only for directories: a file's creation waits for its CLOSE_WRITE.
    .union(WatchFlags::CREATE);

impl DirWatch {
    /// Watches each of `dirs` and the directories directly in them (a file catalog's datacenters), and
    /// calls `wake` when something there changes. An error: inotify is unavailable, or none of `dirs`
    /// can be watched.
    pub fn start(dirs: &[PathBuf], wake: Waker) -> std::io::Result<DirWatch> {
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
        // Watch descriptor -> the directory, for the top directories (whose new subdirectories get a
        // watch of their own).
        let mut tops = HashMap::new();
        let mut last_error = None;
        for dir in dirs {
            match inotify::add_watch(&fd, dir, WAKING | WatchFlags::ONLYDIR) {
                Ok(wd) => {
                    tops.insert(wd, dir.clone());
                    for sub in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                        if sub.file_type().is_ok_and(|t| t.is_dir()) {
                            let _ =
                                inotify::add_watch(&fd, sub.path(), WAKING | WatchFlags::ONLYDIR);
                        }
                    }
                }
                Err(e) => last_error = Some(std::io::Error::from(e)),
            }
        }
        if tops.is_empty() {
            return Err(
                last_error.unwrap_or_else(|| std::io::Error::other("no directory to watch"))
            );
        }
        let stop = Arc::new(eventfd(0, EventfdFlags::CLOEXEC)?);
        let pending = Arc::new(AtomicBool::new(false));
        let watch = DirWatch {
            pending: pending.clone(),
            stop: stop.clone(),
        };
        std::thread::Builder::new()
            .name("meshgate-dirwatch".into())
            .spawn(move || run(&fd, &stop, &tops, &pending, &wake))?;
        Ok(watch)
    }

    /// The control thread is about to poll: the next change wakes it again.
    pub fn taken(&self) {
        self.pending.store(false, Ordering::SeqCst);
    }
}

impl Drop for DirWatch {
    fn drop(&mut self) {
        let _ = rustix::io::write(&*self.stop, &1u64.to_ne_bytes());
    }
}

/// The watcher thread: waits for events (or the stop), wakes the control thread once per batch.
fn run(
    fd: &OwnedFd,
    stop: &OwnedFd,
    tops: &HashMap<i32, PathBuf>,
    pending: &AtomicBool,
    wake: &Waker,
) {
    let mut buf = [MaybeUninit::<u8>::uninit(); 8192];
    loop {
        let mut fds = [
            PollFd::new(fd, PollFlags::IN),
            PollFd::new(stop, PollFlags::IN),
        ];
        match poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "catalog directory watch stopped; the poll alone notices edits");
                return;
            }
        }
        if !fds[1].revents().is_empty() {
            return;
        }
        let mut changed = false;
        let mut reader = inotify::Reader::new(fd, &mut buf);
        loop {
            let event = match reader.next() {
                Ok(e) => e,
                Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "catalog directory watch stopped; the poll alone notices edits");
                    return;
                }
            };
            let flags = event.events();
            let is_dir = flags.contains(ReadFlags::ISDIR);
            if is_dir && flags.intersects(ReadFlags::CREATE | ReadFlags::MOVED_TO) {
                if let (Some(top), Some(name)) = (tops.get(&event.wd()), event.file_name()) {
                    let sub = top.join(OsStr::from_bytes(name.to_bytes()));
                    let _ = inotify::add_watch(fd, sub, WAKING | WatchFlags::ONLYDIR);
                }
            }
            let overflow = flags.contains(ReadFlags::QUEUE_OVERFLOW);
            // A file's creation alone does not wake (its CLOSE_WRITE will); a removed watch says nothing;
            // nor does a hidden name (a temporary file about to be renamed over, an editor's swap file).
            let file_created = flags.contains(ReadFlags::CREATE) && !is_dir;
            let hidden = event
                .file_name()
                .is_some_and(|n| n.to_bytes().starts_with(b"."));
            changed |= overflow || !(file_created || hidden || flags.contains(ReadFlags::IGNORED));
        }
        if changed && !pending.swap(true, Ordering::SeqCst) {
            wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdir::TempDir;
    use std::sync::mpsc::{channel, Receiver};
    use std::time::Duration;

    fn watching(dir: &TempDir) -> (DirWatch, Receiver<()>) {
        let (tx, rx) = channel();
        let tx = std::sync::Mutex::new(tx);
        let wake: Waker = Arc::new(move || {
            let _ = tx.lock().map(|t| t.send(()));
        });
        let watch = DirWatch::start(&[dir.0.join("catalog")], wake).expect("inotify");
        (watch, rx)
    }

    fn woken(rx: &Receiver<()>) -> bool {
        rx.recv_timeout(Duration::from_secs(5)).is_ok()
    }

    fn quiet(rx: &Receiver<()>) -> bool {
        rx.recv_timeout(Duration::from_millis(200)).is_err()
    }

    #[test]
    fn an_edit_wakes_once_until_taken_and_new_subdirectories_are_watched() {
        let dir = TempDir::with_demo_catalog("dirwatch", "dc1");
        let (watch, rx) = watching(&dir);
        assert!(quiet(&rx), "nothing changed yet");
        // Renamed over (as configuration tools write): the hidden file does not wake, its rename does.
        dir.write("catalog/.db.tmp", "service { name = \"db\" }\n");
        assert!(quiet(&rx), "a hidden file");
        std::fs::rename(dir.0.join("catalog/.db.tmp"), dir.0.join("catalog/db.hcl")).expect("mv");
        assert!(woken(&rx));
        // Not taken yet: further edits do not queue more wakes.
        dir.write("catalog/web.hcl", "service { name = \"web\" }\n");
        assert!(quiet(&rx));
        watch.taken();
        // An edit in a datacenter's subdirectory, then in one made after the watch started.
        dir.write("catalog/dc2/api.yaml", "service:\n  name: api\n");
        assert!(woken(&rx));
        watch.taken();
        std::fs::create_dir(dir.0.join("catalog/dc3")).expect("mkdir");
        assert!(woken(&rx), "a new directory wakes");
        watch.taken();
        dir.write(
            "catalog/dc3/mesh-gateway.hcl",
            "service { name = \"mesh-gateway\" }\n",
        );
        assert!(woken(&rx), "its files are watched");
        watch.taken();
        std::fs::remove_file(dir.0.join("catalog/db.hcl")).expect("rm");
        assert!(woken(&rx), "a removal wakes");
        // Dropped: the thread ends and nothing wakes any more.
        drop(watch);
        watch_ends(&rx, &dir);
    }

    fn watch_ends(rx: &Receiver<()>, dir: &TempDir) {
        dir.write("catalog/late.hcl", "service { name = \"late\" }\n");
        assert!(quiet(rx));
    }

    #[test]
    fn a_directory_that_cannot_be_watched_is_an_error() {
        let dir = TempDir::new("dirwatch-missing");
        let wake: Waker = Arc::new(|| {});
        assert!(DirWatch::start(&[dir.0.join("nope")], wake).is_err());
    }
}
