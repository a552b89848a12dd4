//! A small guest SDK for meshgate plugins, written beside your plugin by `meshgate plugin new` (edit it
//! freely: it is yours now). It needs only the bindings `wit_bindgen::generate!` makes in `lib.rs`.
//!
//! - [`init`]: call first in every export. It installs a panic hook, so a panic's message and location
//!   reach the gateway's log at WARN (under the `meshgate::plugin` target, with the plugin's name)
//!   instead of only an "unreachable executed" trap.
//! - `log_error!`, `log_warn!`, `log_info!`, `log_debug!`: `format!`-style lines to the gateway's log, same
//!   target. The gateway rate-limits each plugin's lines.
//! - [`Config`]: typed access to the plugin's `config = { ... }` table. The gateway hands every value
//!   over as a string (`weight = 10` arrives as `"10"`); these getters parse them and name the key in
//!   every error, and [`Config::only`] refuses keys the plugin does not know (a misspelt key).
//! - [`matches`]: does an SNI match a pattern (`name` or `*.suffix`)?

// The SDK offers more than any one plugin uses.
#![allow(dead_code)]

use crate::meshgate::plugin::host;
use crate::meshgate::plugin::types::LogLevel;
use std::fmt;

/// Installs the panic hook (once; cheap to call on every export).
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            host::log(LogLevel::Warn, &format!("plugin panicked: {info}"));
        }));
    });
}

/// One line to the gateway's log.
pub fn log(level: LogLevel, message: &str) {
    host::log(level, message);
}

/// `log_error!("...", args)`: an ERROR line in the gateway's log.
#[macro_export]
macro_rules! log_error { ($($t:tt)*) => { $crate::sdk::log($crate::meshgate::plugin::types::LogLevel::Error, &format!($($t)*)) } }
/// `log_warn!("...", args)`: a WARN line in the gateway's log.
#[macro_export]
macro_rules! log_warn { ($($t:tt)*) => { $crate::sdk::log($crate::meshgate::plugin::types::LogLevel::Warn, &format!($($t)*)) } }
/// `log_info!("...", args)`: an INFO line in the gateway's log.
#[macro_export]
macro_rules! log_info { ($($t:tt)*) => { $crate::sdk::log($crate::meshgate::plugin::types::LogLevel::Info, &format!($($t)*)) } }
/// `log_debug!("...", args)`: a DEBUG line (shown with `--log-level meshgate::plugin=debug,info`).
#[macro_export]
macro_rules! log_debug { ($($t:tt)*) => { $crate::sdk::log($crate::meshgate::plugin::types::LogLevel::Debug, &format!($($t)*)) } }

/// A setting that is not what the plugin expects; its text names the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingError {
    /// The key.
    pub key: String,
    /// What went wrong.
    pub problem: String,
}

impl fmt::Display for SettingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "setting `{}`: {}", self.key, self.problem)
    }
}

impl std::error::Error for SettingError {}

impl From<SettingError> for String {
    fn from(e: SettingError) -> String {
        e.to_string()
    }
}

/// The plugin's settings (`config = { ... }` in the gateway's config), typed. (Not `Settings`: that name is the
/// WIT's raw list, which `generate!` defines at the crate root.)
#[derive(Debug, Clone, Copy)]
pub struct Config<'a>(&'a [(String, String)]);

impl<'a> Config<'a> {
    /// Wraps what an export received.
    pub fn new(settings: &'a [(String, String)]) -> Self {
        Config(settings)
    }

    /// Refuses any key not in `known` (a misspelt key is an error, not a silent default).
    pub fn only(&self, known: &[&str]) -> Result<(), SettingError> {
        match self.0.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            None => Ok(()),
            Some((k, _)) => Err(SettingError {
                key: k.clone(),
                problem: format!("unknown key (this plugin reads: {})", known.join(", ")),
            }),
        }
    }

    /// The raw string, if set.
    pub fn str(&self, key: &str) -> Option<&'a str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A string, or `default` when unset.
    pub fn str_or(&self, key: &str, default: &'a str) -> &'a str {
        self.str(key).unwrap_or(default)
    }

    /// A required string.
    pub fn required(&self, key: &str) -> Result<&'a str, SettingError> {
        self.str(key).ok_or_else(|| SettingError {
            key: key.to_owned(),
            problem: "required, not set".to_owned(),
        })
    }

    /// An unsigned integer, or `default` when unset.
    pub fn u64_or(&self, key: &str, default: u64) -> Result<u64, SettingError> {
        self.parsed(key, default, "an unsigned integer")
    }

    /// A float, or `default` when unset.
    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64, SettingError> {
        self.parsed(key, default, "a number")
    }

    /// `true` or `false`, or `default` when unset.
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool, SettingError> {
        self.parsed(key, default, "`true` or `false`")
    }

    /// A comma-separated list (items trimmed, empty ones dropped); empty when unset.
    pub fn list(&self, key: &str) -> Vec<&'a str> {
        self.str(key)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn parsed<T: std::str::FromStr>(
        &self,
        key: &str,
        default: T,
        expected: &str,
    ) -> Result<T, SettingError> {
        match self.str(key) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|_| SettingError {
                key: key.to_owned(),
                problem: format!("{v:?} is not {expected}"),
            }),
        }
    }
}

/// Whether `name` matches `pattern`: the same name (ASCII case-insensitive), or for `*.suffix` any name
/// with at least one more label in front of the suffix.
pub fn matches(name: &str, pattern: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            name.len() > suffix.len() + 1
                && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
        }
        None => name.eq_ignore_ascii_case(pattern),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn settings_are_typed_and_errors_name_the_key() {
        let raw = kv(&[("weight", "10"), ("on", "true"), ("names", "a, b,,c")]);
        let s = Config::new(&raw);
        assert_eq!(s.u64_or("weight", 1), Ok(10));
        assert_eq!(s.u64_or("missing", 7), Ok(7));
        assert_eq!(s.bool_or("on", false), Ok(true));
        assert_eq!(s.list("names"), ["a", "b", "c"]);
        let e = s.u64_or("on", 0).unwrap_err();
        assert_eq!(e.key, "on");
        assert!(e.to_string().contains("setting `on`"), "{e}");
        assert!(s.only(&["weight", "on", "names"]).is_ok());
        assert_eq!(s.only(&["weight", "on"]).unwrap_err().key, "names");
    }

    #[test]
    fn patterns() {
        assert!(matches("a.example", "*.example"));
        assert!(matches("A.Example", "a.example"));
        assert!(!matches("example", "*.example"));
        assert!(!matches("aexample", "*.example"));
    }
}
