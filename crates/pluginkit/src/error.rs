//! [`AuthorError`]: why a plugin could not be made, built or run.

use std::path::PathBuf;

/// Why `meshgate plugin ...` stopped.
#[derive(Debug, thiserror::Error)]
pub enum AuthorError {
    /// The plugin name cannot be a crate name.
    #[error("plugin name {name:?}: {why}")]
    Name {
        /// The name given.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// `plugin new` refuses to write into a non-empty directory.
    #[error("{}: exists and is not empty (choose another name or --dir)", .0.display())]
    Exists(PathBuf),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A manifest or lockfile could not be understood.
    #[error("{}: {message}", path.display())]
    Manifest {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A tool (cargo, rustup) could not run or failed.
    #[error("{what}: {message}")]
    Tool {
        /// The command.
        what: String,
        /// Why it failed.
        message: String,
    },
    /// The module could not be made a component, or the component is not a plugin.
    #[error("{}: {message}", path.display())]
    Component {
        /// The module or component.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}
