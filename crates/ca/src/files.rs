//! Writing an authority's or a leaf's files so that a private key is never readable by anyone but its
//! owner, never written through a symbolic link, and never left half-written.
//!
//! The directory is opened one component at a time with `O_NOFOLLOW` (created `0755` where missing), so a
//! symbolic link anywhere on the way is refused, and everything after works on that directory handle, not
//! on the path again. Before anything is written, every target name is checked with `lstat`: a symbolic
//! link (dangling or not) or anything but a regular file is refused, so a refused write leaves the
//! directory as it was. Each file is then written to a fresh temporary in the same directory
//! (`O_CREAT | O_EXCL | O_NOFOLLOW`, a random name: never an existing file, never through a link), set to
//! exactly `0600` (keys) or `0644` (certificates) whatever the umask, `fsync`ed, renamed over the target
//! and the directory `fsync`ed.
//!
//! Why this cannot leave a truncated key or a world-readable one: the old file is never opened for
//! writing; `rename(2)` atomically swaps the name from the old complete file to the new complete (already
//! synced, already `0600`) one, so a crash at any point leaves either the old file or the new one under
//! the name, plus at worst a `.<name>.<uuid>.tmp` that is itself `0600` for a key. A mode an existing
//! file had does not matter, since that inode is replaced, not reused. And `rename(2)` replaces a link
//! planted at the target between the check and the rename; it never writes through one.
//!
//! The set of files is not one transaction: a crash between two renames can leave a new certificate with
//! the old key. Rerunning the command repairs it.

use crate::CaError;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, CWD};
use rustix::io::Errno;
use std::ffi::OsStr;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

/// Mode of a private key file.
pub const SECRET_MODE: u32 = 0o600;
/// Mode of a certificate file.
pub const PUBLIC_MODE: u32 = 0o644;
/// Mode of a directory this module creates.
const DIR_MODE: u32 = 0o755;

/// One file to write into a directory.
#[derive(Debug, Clone, Copy)]
pub struct FileSpec<'a> {
    /// Its name (one path component).
    pub name: &'a str,
    /// Its contents.
    pub text: &'a str,
    /// A private key (mode 0600) rather than a certificate (0644).
    pub secret: bool,
}

fn io_err(path: &Path, errno: Errno) -> CaError {
    CaError::Io {
        path: path.to_owned(),
        source: errno.into(),
    }
}

/// What refusing `name` in `parent` (after `errno`) is: a symbolic link, or the error itself.
fn refusal(parent: &OwnedFd, name: &OsStr, path: &Path, errno: Errno) -> CaError {
    match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => CaError::Symlink {
            path: path.to_owned(),
        },
        _ => io_err(path, errno),
    }
}

/// Opens `dir`, creating what is missing, with no symbolic link on the way.
fn open_dir(dir: &Path) -> Result<OwnedFd, CaError> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let start = if dir.is_absolute() { "/" } else { "." };
    let mut fd = rustix::fs::openat(CWD, start, flags, Mode::empty())
        .map_err(|e| io_err(Path::new(start), e))?;
    let mut walked = PathBuf::new();
    for component in dir.components() {
        let name = match component {
            Component::RootDir => {
                walked.push("/");
                continue;
            }
            Component::CurDir => continue,
            Component::ParentDir | Component::Normal(_) => component.as_os_str(),
            Component::Prefix(_) => {
                return Err(CaError::Invalid(format!(
                    "{}: not a Unix path",
                    dir.display()
                )))
            }
        };
        walked.push(name);
        fd = match rustix::fs::openat(&fd, name, flags, Mode::empty()) {
            Ok(next) => next,
            Err(Errno::NOENT) => {
                match rustix::fs::mkdirat(&fd, name, Mode::from_raw_mode(DIR_MODE)) {
                    // Someone else creating it at the same time is as good.
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(io_err(&walked, e)),
                }
                rustix::fs::openat(&fd, name, flags, Mode::empty())
                    .map_err(|e| refusal(&fd, name, &walked, e))?
            }
            Err(e) => return Err(refusal(&fd, name, &walked, e)),
        };
    }
    Ok(fd)
}

/// Refuses a target that is a symbolic link or not a regular file; a missing one is fine.
fn check_target(dirfd: &OwnedFd, path: &Path, name: &str) -> Result<(), CaError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(CaError::Invalid(format!("{name:?} is not a file name")));
    }
    match rustix::fs::statat(dirfd, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => Ok(()),
            FileType::Symlink => Err(CaError::Symlink {
                path: path.to_owned(),
            }),
            other => Err(CaError::Invalid(format!(
                "{}: is not a regular file ({other:?}); refusing to replace it",
                path.display()
            ))),
        },
        Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(io_err(path, e)),
    }
}

/// Writes one file through a temporary (see the module docs); the temporary is removed on failure.
fn write_one(dirfd: &OwnedFd, path: &Path, file: &FileSpec<'_>) -> Result<(), CaError> {
    let mode = Mode::from_raw_mode(if file.secret {
        SECRET_MODE
    } else {
        PUBLIC_MODE
    });
    let tmp = format!(".{}.{}.tmp", file.name, uuid::Uuid::new_v4().simple());
    let fd = rustix::fs::openat(
        dirfd,
        tmp.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        mode,
    )
    .map_err(|e| io_err(&path.with_file_name(&tmp), e))?;
    let written = (|| -> Result<(), CaError> {
        // The umask only ever narrows the creation mode; set it exactly.
        rustix::fs::fchmod(&fd, mode).map_err(|e| io_err(path, e))?;
        let mut f = std::fs::File::from(fd);
        let io = |source| CaError::Io {
            path: path.to_owned(),
            source,
        };
        f.write_all(file.text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        rustix::fs::renameat(dirfd, tmp.as_str(), dirfd, file.name).map_err(|e| io_err(path, e))
    })();
    if written.is_err() {
        let _ = rustix::fs::unlinkat(dirfd, tmp.as_str(), AtFlags::empty());
    }
    written?;
    // The rename is durable once the directory is.
    rustix::fs::fsync(dirfd).map_err(|e| io_err(path, e))
}

/// Writes `files` into `dir` (created where missing): keys 0600 and certificates 0644 whatever was there
/// before, each atomically, nothing through a symbolic link. Every target is checked before the first
/// write, so a refused set writes nothing.
pub fn write_files(dir: &Path, files: &[FileSpec<'_>]) -> Result<(), CaError> {
    let dirfd = open_dir(dir)?;
    for file in files {
        check_target(&dirfd, &dir.join(file.name), file.name)?;
    }
    for file in files {
        write_one(&dirfd, &dir.join(file.name), file)?;
    }
    Ok(())
}
