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
//!
//! [`DirWatch::taken`] also answers which files changed since it was last called (the catalog plugin's
//! `changed-files`, so it can read those instead of listing every file): each as the granted directory
//! as the config writes it, `/`, its path below. It answers "unknown" instead when it cannot vouch for
//! the list: its first call (edits before the watch began), a lost event (queue overflow), a directory
//! made, moved or removed, or more than [`MAX_HINTS`] names at once.

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
use std::sync::{Arc, Mutex};

/// Most file names kept between two polls; past it the list is "unknown" (the plugin lists everything).
pub const MAX_HINTS: usize = 4096;

/// The files that changed since the control thread last took them.
#[derive(Debug)]
struct Hints {
    /// The list cannot be trusted: the next take answers `None`.
    unknown: bool,
    files: Vec<String>,
}

impl Hints {
    fn unknown(&mut self) {
        self.unknown = true;
        self.files.clear();
    }
}

/// A running watch; dropping it ends its thread.
pub struct DirWatch {
    pending: Arc<AtomicBool>,
    hints: Arc<Mutex<Hints>>,
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
    /// Watches each of `dirs` (the directory, and how the config writes it) and the directories
    /// directly in them (a file catalog's datacenters), and calls `wake` when something there changes.
    /// An error: inotify is unavailable, or none of `dirs` can be watched.
    pub fn start(dirs: &[(PathBuf, String)], wake: Waker) -> std::io::Result<DirWatch> {
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
        // Watch descriptor -> the directory, for the top directories (whose new subdirectories get a
        // watch of their own); and for every watch, how its files are named to the plugin.
        let mut tops = HashMap::new();
        let mut shown = HashMap::new();
        let mut last_error = None;
        for (dir, written) in dirs {
            let written = written.trim_end_matches('/').to_owned();
            match inotify::add_watch(&fd, dir, WAKING | WatchFlags::ONLYDIR) {
                Ok(wd) => {
                    tops.insert(wd, (dir.clone(), written.clone()));
                    shown.insert(wd, written.clone());
                    for sub in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                        if sub.file_type().is_ok_and(|t| t.is_dir()) {
                            if let Ok(wd) =
                                inotify::add_watch(&fd, sub.path(), WAKING | WatchFlags::ONLYDIR)
                            {
                                let name = sub.file_name();
                                shown.insert(wd, format!("{written}/{}", name.to_string_lossy()));
                            }
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
        // Edits made before the watch began are not in any list: the first take says "unknown".
        let hints = Arc::new(Mutex::new(Hints {
            unknown: true,
            files: Vec::new(),
        }));
        let watch = DirWatch {
            pending: pending.clone(),
            hints: hints.clone(),
            stop: stop.clone(),
        };
        let mut names = Names { tops, shown };
        std::thread::Builder::new()
            .name("meshgate-dirwatch".into())
            .spawn(move || run(&fd, &stop, &mut names, &pending, &hints, &wake))?;
        Ok(watch)
    }

    /// The control thread is about to poll: the next change wakes it again. Answers the files changed
    /// since the previous take (`None`: unknown, see the module's doc).
    pub fn taken(&self) -> Option<Vec<String>> {
        // Cleared first: a name recorded after the list is taken wakes the thread again.
        self.pending.store(false, Ordering::SeqCst);
        let mut hints = self.hints.lock().ok()?;
        let files = std::mem::take(&mut hints.files);
        if std::mem::replace(&mut hints.unknown, false) {
            None
        } else {
            Some(files)
        }
    }
}

impl Drop for DirWatch {
    fn drop(&mut self) {
        let _ = rustix::io::write(&*self.stop, &1u64.to_ne_bytes());
    }
}

/// How the watcher names what it sees.
struct Names {
    /// Watch descriptor of a top directory -> the directory and how the config writes it.
    tops: HashMap<i32, (PathBuf, String)>,
    /// Watch descriptor -> how the plugin names its directory.
    shown: HashMap<i32, String>,
}

/// The watcher thread: waits for events (or the stop), wakes the control thread once per batch.
fn run(
    fd: &OwnedFd,
    stop: &OwnedFd,
    names: &mut Names,
    pending: &AtomicBool,
    hints: &Mutex<Hints>,
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
        let mut lost = false;
        let mut files = Vec::new();
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
                if let (Some((top, written)), Some(name)) =
                    (names.tops.get(&event.wd()), event.file_name())
                {
                    let name = OsStr::from_bytes(name.to_bytes());
                    if let Ok(wd) =
                        inotify::add_watch(fd, top.join(name), WAKING | WatchFlags::ONLYDIR)
                    {
                        let shown = format!("{written}/{}", name.to_string_lossy());
                        names.shown.insert(wd, shown);
                    }
                }
            }
            let overflow = flags.contains(ReadFlags::QUEUE_OVERFLOW);
            // A file's creation alone does not wake (its CLOSE_WRITE will); a removed watch says nothing;
            // nor does a hidden name (a temporary file about to be renamed over, an editor's swap file).
            let file_created = flags.contains(ReadFlags::CREATE) && !is_dir;
            let hidden = event
                .file_name()
                .is_some_and(|n| n.to_bytes().starts_with(b"."));
            let wakes = overflow || !(file_created || hidden || flags.contains(ReadFlags::IGNORED));
            changed |= wakes;
            if !wakes || overflow {
                lost |= overflow;
                continue;
            }
            // A directory made, moved or removed changes which files there are: no list vouches for it.
            match (is_dir, names.shown.get(&event.wd()), event.file_name()) {
                (false, Some(dir), Some(name)) => {
                    files.push(format!(
                        "{dir}/{}",
                        String::from_utf8_lossy(name.to_bytes())
                    ));
                }
                _ => lost = true,
            }
        }
        if changed {
            if let Ok(mut h) = hints.lock() {
                if lost || h.files.len() + files.len() > MAX_HINTS {
                    h.unknown();
                } else if !h.unknown {
                    h.files.append(&mut files);
                }
            }
            // Recorded before the flag is looked at: a take in between gets the names, a take after
            // clears the flag, so this wakes it again.
            if !pending.swap(true, Ordering::SeqCst) {
                wake();
            }
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
        let watch =
            DirWatch::start(&[(dir.0.join("catalog"), "catalog".into())], wake).expect("inotify");
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

    /// Takes until `want` names were answered (each take after a wake), failing on an "unknown".
    fn names_until(watch: &DirWatch, rx: &Receiver<()>, want: usize) -> Vec<String> {
        let mut seen = std::collections::BTreeSet::new();
        while seen.len() < want {
            assert!(woken(rx), "woken for {want} names, seen {seen:?}");
            seen.extend(watch.taken().expect("a known list"));
        }
        seen.into_iter().collect()
    }

    #[test]
    fn taken_names_the_files_changed_since_the_last_take_or_says_it_cannot() {
        let dir = TempDir::with_demo_catalog("dirwatch-hints", "dc1");
        let (watch, rx) = watching(&dir);
        assert_eq!(
            watch.taken(),
            None,
            "edits before the watch began are in no list"
        );
        dir.write("catalog/db.hcl", "service { name = \"db\" }\n");
        dir.write("catalog/dc2/api.yaml", "service:\n  name: api\n");
        assert_eq!(
            names_until(&watch, &rx, 2),
            vec![
                "catalog/db.hcl".to_owned(),
                "catalog/dc2/api.yaml".to_owned()
            ]
        );
        std::fs::remove_file(dir.0.join("catalog/db.hcl")).expect("rm");
        assert_eq!(
            names_until(&watch, &rx, 1),
            vec!["catalog/db.hcl".to_owned()]
        );
        // A directory made: which files there are changed, so no list.
        std::fs::create_dir(dir.0.join("catalog/dc3")).expect("mkdir");
        assert!(woken(&rx));
        assert_eq!(watch.taken(), None);
        dir.write("catalog/dc3/gw.hcl", "service { name = \"gw\" }\n");
        assert_eq!(
            names_until(&watch, &rx, 1),
            vec!["catalog/dc3/gw.hcl".to_owned()]
        );
    }

    #[test]
    fn a_directory_that_cannot_be_watched_is_an_error() {
        let dir = TempDir::new("dirwatch-missing");
        let wake: Waker = Arc::new(|| {});
        assert!(DirWatch::start(&[(dir.0.join("nope"), "nope".into())], wake).is_err());
    }
}
