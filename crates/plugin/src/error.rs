//! Why a plugin call failed: one typed error per way a plugin can fail, each with its metrics label.

use thiserror::Error;

/// Why a plugin call failed. Each variant maps to a metrics label ([`PluginError::reason`]).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PluginError {
    /// The component could not be read, compiled, linked or instantiated.
    #[error("plugin {plugin}: cannot load: {message}")]
    Load {
        /// Plugin name.
        plugin: String,
        /// Why.
        message: String,
    },
    /// The plugin trapped (panicked, hit `unreachable`...).
    #[error("plugin {plugin}: trapped: {message}")]
    Trap {
        /// Plugin name.
        plugin: String,
        /// The trap.
        message: String,
    },
    /// The call ran past its deadline.
    #[error("plugin {plugin}: ran past its {ms} ms deadline")]
    Deadline {
        /// Plugin name.
        plugin: String,
        /// The deadline.
        ms: u128,
    },
    /// The plugin tried to grow its memory past the cap.
    #[error("plugin {plugin}: hit its memory cap of {mib} MiB")]
    Memory {
        /// Plugin name.
        plugin: String,
        /// The cap.
        mib: usize,
    },
    /// The plugin returned an error.
    #[error("plugin {plugin}: {message}")]
    Refused {
        /// Plugin name.
        plugin: String,
        /// Its message.
        message: String,
    },
    /// The plugin's `configure` refused its settings.
    #[error("plugin {plugin}: refused its settings: {message}")]
    Config {
        /// Plugin name.
        plugin: String,
        /// Its message.
        message: String,
    },
    /// The plugin's answer is not acceptable (e.g. an invalid route table).
    #[error("plugin {plugin}: invalid answer: {message}")]
    Invalid {
        /// Plugin name.
        plugin: String,
        /// What is wrong.
        message: String,
    },
}

impl PluginError {
    /// Stable metrics label.
    pub fn reason(&self) -> &'static str {
        match self {
            PluginError::Load { .. } => "load",
            PluginError::Trap { .. } => "trap",
            PluginError::Deadline { .. } => "deadline",
            PluginError::Memory { .. } => "memory",
            PluginError::Refused { .. } => "error",
            PluginError::Invalid { .. } => "invalid",
            PluginError::Config { .. } => "config",
        }
    }
}
