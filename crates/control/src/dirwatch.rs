//! Wakes the control thread when something changes under the directories a polled catalog plugin may
//! read (Linux inotify), so an edit reaches the route table in the time the work takes rather than up to
//! `poll_ms` later. The plugin's poll still does all the reading; this only makes it come sooner. Where
//! inotify cannot watch (a network file system, the per-user watch limit), nothing is lost: the poll
//! alone notices edits, as before.
//!
//! Every directory below the granted ones is watched (hidden ones aside, at most [`MAX_DIRS`]). What
//! wakes: a file closed after writing, renamed in or out, deleted, or its attributes changed (a
//! `touch`); a directory made (then watched too, with what it holds). Not a write still in progress (`IN_MODIFY`), nor a
//! new empty file (`IN_CREATE`): the poll would read half a file; nor a hidden name (`.x.tmp` written
//! before it is renamed over `x`, an editor's swap file), which catalogs skip. One wake at a time: after waking, the
//! watcher waits for [`DirWatch::taken`] (the control thread about to poll) before it wakes again, so a
//! burst of edits costs one poll per poll the control thread can run, never a queue of them.
//!
//! [`DirWatch::taken`] also answers which files changed since it was last called (the catalog plugin's
//! `changed-files`, so it can read those instead of listing every file): each as the granted directory
//! as the config writes it, `/`, its path below. It answers "unknown" instead when it cannot vouch for
//! the list: its first call (edits before the watch began), a lost event (queue overflow), a directory
//! made, moved or removed, or more than [`MAX_HINTS`] names at once; and always, once a directory
//! could not be watched or the watcher stopped (its lists would leave that directory out).
//!
//! Timed polls use the list too ([`DirWatch::for_timed_poll`]): an unchanged poll of a large catalog
//! then costs no listing, and a change never waits behind one. Every [`LIST_EVERY`]th timed poll lists
//! everything all the same, for what inotify cannot see (an edit on a network file system made by
//! another host).

use crate::consul::watches::Waker;
use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags};
use rustix::fd::OwnedFd;
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Most file names kept between two polls; past it the list is "unknown" (the plugin lists everything).
pub const MAX_HINTS: usize = 4096;

/// One timed poll in this many lists every file even while the watch vouches for its lists (10 s at the
/// default 250 ms poll).
pub const LIST_EVERY: u32 = 40;

/// Most directories watched; past it the watch vouches for no list.
pub const MAX_DIRS: usize = 1024;

/// The files that changed since the control thread last took them.
#[derive(Debug)]
struct Hints {
    /// The list cannot be trusted: the next take answers `None`.
    unknown: bool,
    /// No list can be trusted (a directory is not watched, the watcher stopped): every take is `None`.
    blind: bool,
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
    /// Timed polls so far (every [`LIST_EVERY`]th lists everything).
    timed: u32,
}

const WAKING: WatchFlags = WatchFlags::CLOSE_WRITE
    .union(WatchFlags::MOVED_TO)
    .union(WatchFlags::MOVED_FROM)
    .union(WatchFlags::DELETE)
    .union(WatchFlags::ATTRIB)
    // Only for directories: a file's creation waits for its CLOSE_WRITE.
    .union(WatchFlags::CREATE);

impl DirWatch {
    /// Watches each of `dirs` (the directory, and how the config writes it) and every directory
    /// below them (a file catalog's datacenters), and calls `wake` when something there changes.
    /// An error: inotify is unavailable, or none of `dirs` can be watched.
    pub fn start(dirs: &[(PathBuf, String)], wake: Waker) -> std::io::Result<DirWatch> {
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
        let mut names = Names {
            dirs: HashMap::new(),
        };
        let mut last_error = None;
        let mut watched = false;
        let mut blind = false;
        for (dir, written) in dirs {
            let written = written.trim_end_matches('/').to_owned();
            match inotify::add_watch(&fd, dir, WAKING | WatchFlags::ONLYDIR) {
                Ok(wd) => {
                    watched = true;
                    names.dirs.insert(wd, (dir.clone(), written.clone()));
                    blind |= !names.watch_below(&fd, dir, &written);
                }
                Err(e) => {
                    blind = true;
                    last_error = Some(std::io::Error::from(e));
                }
            }
        }
        if !watched {
            return Err(
                last_error.unwrap_or_else(|| std::io::Error::other("no directory to watch"))
            );
        }
        let stop = Arc::new(eventfd(0, EventfdFlags::CLOEXEC)?);
        let pending = Arc::new(AtomicBool::new(false));
        // Edits made before the watch began are not in any list: the first take says "unknown".
        let hints = Arc::new(Mutex::new(Hints {
            unknown: true,
            blind,
            files: Vec::new(),
        }));
        if blind {
            tracing::warn!("a catalog directory cannot be watched; every poll lists the catalog");
        }
        let watch = DirWatch {
            pending: pending.clone(),
            hints: hints.clone(),
            stop: stop.clone(),
            timed: 0,
        };
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
        if std::mem::replace(&mut hints.unknown, false) || hints.blind {
            None
        } else {
            Some(files)
        }
    }

    /// As [`DirWatch::taken`], for a poll the schedule made (not a wake): `None` every
    /// [`LIST_EVERY`]th time, so the plugin lists everything.
    pub fn for_timed_poll(&mut self) -> Option<Vec<String>> {
        self.timed = self.timed.wrapping_add(1);
        let files = self.taken();
        if self.timed % LIST_EVERY == 0 {
            None
        } else {
            files
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
    /// Watch descriptor -> the directory, and how the plugin names it (the granted directory as the
    /// config writes it, `/`, the path below).
    dirs: HashMap<i32, (PathBuf, String)>,
}

impl Names {
    /// Watches every directory below `dir` (named `shown`), hidden ones aside. False when one could not
    /// be watched, or past [`MAX_DIRS`]: then no list can vouch for what changed there.
    fn watch_below(&mut self, fd: &OwnedFd, dir: &Path, shown: &str) -> bool {
        let mut todo = vec![(dir.to_path_buf(), shown.to_owned())];
        while let Some((dir, shown)) = todo.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                return false;
            };
            for sub in entries.flatten() {
                let name = sub.file_name();
                if !sub.file_type().is_ok_and(|t| t.is_dir()) || name.as_bytes().starts_with(b".") {
                    continue;
                }
                if self.dirs.len() >= MAX_DIRS {
                    return false;
                }
                let path = sub.path();
                let Ok(wd) = inotify::add_watch(fd, &path, WAKING | WatchFlags::ONLYDIR) else {
                    return false;
                };
                let shown = format!("{shown}/{}", name.to_string_lossy());
                self.dirs.insert(wd, (path.clone(), shown.clone()));
                todo.push((path, shown));
            }
        }
        true
    }
}

/// From now on no list is trusted.
fn blind(hints: &Mutex<Hints>) {
    if let Ok(mut h) = hints.lock() {
        h.blind = true;
        h.files.clear();
    }
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
                blind(hints);
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
                    blind(hints);
                    return;
                }
            };
            let flags = event.events();
            let is_dir = flags.contains(ReadFlags::ISDIR);
            if is_dir && flags.intersects(ReadFlags::CREATE | ReadFlags::MOVED_TO) {
                if let (Some((parent, shown)), Some(name)) =
                    (names.dirs.get(&event.wd()), event.file_name())
                {
                    let name = OsStr::from_bytes(name.to_bytes());
                    if !name.as_bytes().starts_with(b".") {
                        let path = parent.join(name);
                        let shown = format!("{shown}/{}", name.to_string_lossy());
                        let watched = names.dirs.len() < MAX_DIRS
                            && match inotify::add_watch(fd, &path, WAKING | WatchFlags::ONLYDIR) {
                                Ok(wd) => {
                                    names.dirs.insert(wd, (path.clone(), shown.clone()));
                                    // Made with content (moved in): its directories too.
                                    names.watch_below(fd, &path, &shown)
                                }
                                Err(_) => false,
                            };
                        if !watched {
                            tracing::warn!(directory = %path.display(), "a new catalog directory cannot be watched; every poll lists the catalog");
                            blind(hints);
                        }
                    }
                }
            }
            if flags.contains(ReadFlags::IGNORED) {
                // The directory is gone (its removal was reported on its parent).
                names.dirs.remove(&event.wd());
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
            match (is_dir, names.dirs.get(&event.wd()), event.file_name()) {
                (false, Some((_, dir)), Some(name)) => {
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
    fn timed_polls_take_the_list_but_every_nth_lists_everything() {
        let dir = TempDir::with_demo_catalog("dirwatch-timed", "dc1");
        let (mut watch, rx) = watching(&dir);
        assert_eq!(watch.for_timed_poll(), None, "the first take: unknown");
        for n in 2..LIST_EVERY {
            assert_eq!(watch.for_timed_poll(), Some(vec![]), "timed poll {n}");
        }
        dir.write("catalog/db.hcl", "service { name = \"db\" }\n");
        assert!(woken(&rx));
        // The LIST_EVERY-th: everything is listed, and the names it took are not answered again.
        assert_eq!(watch.for_timed_poll(), None);
        assert_eq!(watch.for_timed_poll(), Some(vec![]));
    }

    #[test]
    fn directories_at_any_depth_are_watched_and_named() {
        let dir = TempDir::with_demo_catalog("dirwatch-deep", "dc1");
        let (tx, rx) = channel();
        let tx = std::sync::Mutex::new(tx);
        let wake: Waker = Arc::new(move || {
            let _ = tx.lock().map(|t| t.send(()));
        });
        // The granted directory is the catalog's parent: its datacenters are two levels down.
        let watch = DirWatch::start(&[(dir.0.clone(), ".".into())], wake).expect("inotify");
        assert_eq!(watch.taken(), None);
        dir.write("catalog/dc2/api.yaml", "service:\n  name: api\n");
        assert_eq!(
            names_until(&watch, &rx, 1),
            vec!["./catalog/dc2/api.yaml".to_owned()]
        );
        // A tree moved in whole: its files are in no list, and its directories are watched from now.
        std::fs::create_dir_all(dir.0.join("staged/dc3")).expect("mkdir");
        assert!(woken(&rx));
        watch.taken();
        std::fs::rename(dir.0.join("staged"), dir.0.join("catalog/more")).expect("mv");
        assert!(woken(&rx));
        assert_eq!(watch.taken(), None, "a directory moved in");
        dir.write("catalog/more/dc3/gw.hcl", "service { name = \"gw\" }\n");
        assert_eq!(
            names_until(&watch, &rx, 1),
            vec!["./catalog/more/dc3/gw.hcl".to_owned()]
        );
    }

    #[test]
    fn a_watch_missing_a_directory_vouches_for_no_list() {
        let dir = TempDir::with_demo_catalog("dirwatch-blind", "dc1");
        let wake: Waker = Arc::new(|| {});
        let watch = DirWatch::start(
            &[
                (dir.0.join("catalog"), "catalog".into()),
                (dir.0.join("nope"), "nope".into()),
            ],
            wake,
        )
        .expect("one directory is watched");
        for _ in 0..3 {
            assert_eq!(watch.taken(), None, "nope/ changes would be in no list");
        }
    }

    #[test]
    fn a_directory_that_cannot_be_watched_is_an_error() {
        let dir = TempDir::new("dirwatch-missing");
        let wake: Waker = Arc::new(|| {});
        assert!(DirWatch::start(&[(dir.0.join("nope"), "nope".into())], wake).is_err());
    }
}
