//! The control plane's one error type. Each variant says whose fault a failure is — the operator's
//! configuration, a plugin it names, or the host — and [`ControlError::exit_code`] is the one place that
//! turns that into the process's exit status.

use meshgate_plugin::PluginError;

/// Exit status when the configuration, or a plugin it names, cannot be used: fix the file.
pub const EXIT_CONFIG: u8 = 2;
/// Exit status when the host cannot run what the configuration asks (io_uring, locked memory, threads,
/// a port in use, a core that failed): fix the machine or its limits.
pub const EXIT_HOST: u8 = 1;

/// Why a gateway or a sidecar could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The operator's configuration cannot be used; the message names the file, line and field when it
    /// can.
    #[error("{0}")]
    Config(String),
    /// A plugin the configuration names could not be loaded, or failed on its first use.
    #[error("{section} {source}")]
    Plugin {
        /// The configuration section that names it (`[catalog]`, `[router]`, `[hook]`).
        section: &'static str,
        /// What went wrong inside the sandbox.
        #[source]
        source: PluginError,
    },
    /// The host cannot run it: io_uring, locked memory, a thread, an address in use, a failed core.
    #[error("{0}")]
    Host(String),
}

impl ControlError {
    /// The process exit status for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            ControlError::Config(_) | ControlError::Plugin { .. } => EXIT_CONFIG,
            ControlError::Host(_) => EXIT_HOST,
        }
    }

    /// The same failure, its message prefixed with the file it concerns (`FILE: message`).
    pub fn in_file(self, file: &std::path::Path) -> ControlError {
        let prefix = |m: String| format!("{}: {m}", file.display());
        match self {
            ControlError::Config(m) => ControlError::Config(prefix(m)),
            ControlError::Host(m) => ControlError::Host(prefix(m)),
            ControlError::Plugin { section, source } => {
                ControlError::Config(prefix(format!("{section} {source}")))
            }
        }
    }
}

impl From<meshgate_config::LoadError> for ControlError {
    fn from(e: meshgate_config::LoadError) -> ControlError {
        ControlError::Config(e.to_string())
    }
}

impl From<meshgate_engine::EngineError> for ControlError {
    fn from(e: meshgate_engine::EngineError) -> ControlError {
        match e {
            // The hook the configuration names could not be made on a core.
            meshgate_engine::EngineError::Hook { .. } => ControlError::Config(e.to_string()),
            // Every other engine failure is the host's: binding fails on its state (in use, not an
            // address of this machine, privileged), executors on its io_uring and locked-memory limits.
            _ => ControlError::Host(e.to_string()),
        }
    }
}

impl From<meshgate_sidecar::SidecarError> for ControlError {
    fn from(e: meshgate_sidecar::SidecarError) -> ControlError {
        ControlError::Host(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_fault() {
        assert_eq!(ControlError::Config("x".into()).exit_code(), EXIT_CONFIG);
        assert_eq!(ControlError::Host("x".into()).exit_code(), EXIT_HOST);
        let plugin = ControlError::Plugin {
            section: "[catalog]",
            source: PluginError::Load {
                plugin: "nope".into(),
                message: "missing".into(),
            },
        };
        assert_eq!(plugin.exit_code(), EXIT_CONFIG);
        let located = plugin.in_file(std::path::Path::new("gw.toml"));
        assert_eq!(located.exit_code(), EXIT_CONFIG);
        assert_eq!(
            located.to_string(),
            "gw.toml: [catalog] plugin nope: cannot load: missing"
        );
    }
}
