//! Reading a gateway's configuration file and validating it whole: every check that must fail at boot —
//! or at reload, leaving the running table alone — with an error located in the file.

use crate::defaults::DEFAULT_IO_MEMORY_KIB;
use crate::error::{find_key, locate};
use crate::{Config, ConfigError, LoadError, PluginSection};
use std::path::{Path, PathBuf};

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, LoadError> {
        Ok(Self::parse(&read_file(path)?, path)?)
    }

    /// Parses and validates configuration text; `file` is used in errors only.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = from_toml(text, file)?;
        config.base_dir = base_dir(file);
        config.validate(text, file)?;
        Ok(config)
    }

    fn validate(&self, text: &str, file: &Path) -> Result<(), ConfigError> {
        let g = &self.gateway;
        let whole = |field: &str, message: String| {
            let span = find_key(text, "gateway", field.rsplit('.').next().unwrap_or(field));
            locate(text, file, span, Some(field), message)
        };
        if g.listen.is_empty() {
            return Err(whole(
                "gateway.listen",
                "at least one listen address is required".into(),
            ));
        }
        if g.workers == Some(0) {
            return Err(whole("gateway.workers", "must be at least 1".into()));
        }
        if g.max_client_hello_bytes < 512
            || g.max_client_hello_bytes > meshgate_sni::MAX_HELLO_BYTES_LIMIT
        {
            return Err(whole(
                "gateway.max_client_hello_bytes",
                format!(
                    "must be between 512 and {} bytes",
                    meshgate_sni::MAX_HELLO_BYTES_LIMIT
                ),
            ));
        }
        for (field, value) in [
            ("gateway.hello_timeout_ms", g.hello_timeout_ms),
            ("gateway.connect_timeout_ms", g.connect_timeout_ms),
            ("gateway.idle_timeout_secs", g.idle_timeout_secs),
            ("gateway.max_connections", u64::from(g.max_connections)),
        ] {
            if value == 0 {
                return Err(whole(field, "must be greater than 0".into()));
            }
        }
        if g.io_memory_kib < DEFAULT_IO_MEMORY_KIB {
            return Err(whole(
                "gateway.io_memory_kib",
                format!("glommio needs at least {DEFAULT_IO_MEMORY_KIB} KiB"),
            ));
        }
        let p = &g.probe;
        for (field, value, max) in [
            ("interval_ms", p.interval_ms, 3_600_000),
            ("timeout_ms", p.timeout_ms, 60_000),
            ("recheck_ms", p.recheck_ms, 3_600_000),
            ("down_after", u64::from(p.down_after), 100),
            ("up_after", u64::from(p.up_after), 100),
        ] {
            if value == 0 || value > max {
                let span = find_key(text, "gateway.probe", field);
                return Err(locate(
                    text,
                    file,
                    span,
                    Some(&format!("gateway.probe.{field}")),
                    format!("must be between 1 and {max}"),
                ));
            }
        }
        if self.router.is_some() && self.catalog.is_none() {
            let span = find_key(text, "router", "plugin");
            return Err(locate(
                text,
                file,
                span,
                Some("router"),
                "a router plugin needs a [catalog] plugin to route from".into(),
            ));
        }
        validate_plugin_sections(
            text,
            file,
            &[
                ("catalog", &self.catalog),
                ("router", &self.router),
                ("hook", &self.hook),
            ],
        )?;
        if let Some(consul) = &self.consul {
            consul.validate(text, file)?;
        }
        self.route_table_located(text, file).map(|_| ())
    }
}

/// A config file's text.
pub(crate) fn read_file(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        file: path.to_owned(),
        source,
    })
}

/// Deserializes a config file's text; a TOML or schema error is located in `file`.
pub(crate) fn from_toml<T: serde::de::DeserializeOwned>(
    text: &str,
    file: &Path,
) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        locate(text, file, span, None, e.message().trim_end().to_owned())
    })
}

/// The directory relative paths in `file` start from.
pub(crate) fn base_dir(file: &Path) -> PathBuf {
    file.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_owned)
}

/// Plugin limits must be positive.
pub(crate) fn validate_plugin_sections(
    text: &str,
    file: &Path,
    sections: &[(&str, &Option<PluginSection>)],
) -> Result<(), ConfigError> {
    for (name, section) in sections {
        if let Some(s) = section {
            if s.on_failure.is_some() && *name != "hook" {
                let span = find_key(text, name, "on_failure");
                return Err(locate(
                    text,
                    file,
                    span,
                    Some(&format!("{name}.on_failure")),
                    "only a [hook] has an on_failure policy".into(),
                ));
            }
            for (field, value) in [
                ("deadline_ms", s.deadline_ms),
                ("memory_mib", s.memory_mib),
                ("poll_ms", s.poll_ms),
            ] {
                if value == 0 {
                    let span = find_key(text, name, field);
                    return Err(locate(
                        text,
                        file,
                        span,
                        Some(&format!("{name}.{field}")),
                        "must be greater than 0".into(),
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::defaults::{DEFAULT_PLUGIN_DEADLINE_MS, DEFAULT_ROUTER_PLUGIN};
    use crate::test_support::{parse, GOOD};
    use crate::Config;
    use std::path::Path;

    #[test]
    fn gateway_values_are_checked() {
        let e = parse("[gateway]\nworkers = 0\nlisten = [\"127.0.0.1:1\"]\n").expect_err("workers");
        assert_eq!((e.line, e.field.as_str()), (2, "gateway.workers"), "{e}");
        let e = parse("[gateway]\nname = \"x\"\n").expect_err("listen");
        assert_eq!(e.field, "gateway.listen", "{e}");
        let e = parse("[gateway]\nlisten = [\"127.0.0.1:1\"]\nmax_client_hello_bytes = 100000\n")
            .expect_err("hello cap");
        assert_eq!(e.line, 3, "{e}");
        let e = parse("[gateway]\nlisten = [\"127.0.0.1:1\"]\nrelay = \"sendfile\"\n")
            .expect_err("relay");
        assert_eq!((e.line, e.field.as_str()), (3, "gateway.relay"), "{e}");
        let e = parse("[gateway]\nlisten = [\"127.0.0.1:1\"]\nbalance = \"round_robin\"\n")
            .expect_err("balance");
        assert_eq!((e.line, e.field.as_str()), (3, "gateway.balance"), "{e}");
        let c =
            parse("[gateway]\nlisten = [\"127.0.0.1:1\"]\nbalance = \"kernel\"\n").expect("kernel");
        assert_eq!(c.gateway.balance, crate::Balance::Kernel);
        let c = parse("[gateway]\nlisten = [\"127.0.0.1:1\"]\n").expect("default");
        assert_eq!(c.gateway.balance, crate::Balance::Connections);
    }

    #[test]
    fn probe_settings_default_safely_and_are_checked() {
        let c = parse(GOOD).expect("valid");
        assert_eq!(c.gateway.probe, crate::ProbeSettings::default());
        assert!(c.gateway.probe.enabled);
        let text = format!("{GOOD}\n[gateway.probe]\ninterval_ms = 100\ndown_after = 1\n");
        let c = parse(&text).expect("valid");
        assert_eq!(c.gateway.probe.interval_ms, 100);
        assert_eq!(c.gateway.probe.down_after, 1);
        let e = parse(&format!("{GOOD}\n[gateway.probe]\nup_after = 0\n")).expect_err("zero");
        assert_eq!(e.field, "gateway.probe.up_after", "{e}");
        assert!(e.line >= 20, "located in the probe table: {e}");
        let e = parse(&format!("{GOOD}\n[gateway.probe]\ntimeout_ms = 600000\n"))
            .expect_err("too long");
        assert_eq!(e.field, "gateway.probe.timeout_ms", "{e}");
        let e = parse(&format!("{GOOD}\n[gateway.probe]\nintervall_ms = 5\n")).expect_err("typo");
        assert!(e.message.contains("unknown field"), "{e}");
    }

    #[test]
    fn plugin_sections() {
        let text = format!("{GOOD}\n[catalog]\nplugin = \"file-catalog\"\nconfig = {{ dir = \"dc1\", poll = 3 }}\nallow_dirs = [\"dc1\"]\n");
        let c = Config::parse(&text, Path::new("configs/demo/gw.toml")).expect("valid");
        let cat = c.catalog.as_ref().expect("catalog");
        assert_eq!(
            cat.settings(),
            vec![("dir".into(), "dc1".into()), ("poll".into(), "3".into())]
        );
        assert_eq!(cat.deadline_ms, DEFAULT_PLUGIN_DEADLINE_MS);
        assert_eq!(
            c.router_section().expect("router").plugin,
            DEFAULT_ROUTER_PLUGIN
        );
        assert_eq!(c.base_dir, Path::new("configs/demo"));

        let e = parse(&format!("{GOOD}\n[router]\nplugin = \"consul-router\"\n"))
            .expect_err("router alone");
        assert_eq!(e.field, "router", "{e}");
        let e = parse(&format!(
            "{GOOD}\n[catalog]\nplugin = \"x\"\ndeadline_ms = 0\n"
        ))
        .expect_err("zero");
        assert_eq!(e.field, "catalog.deadline_ms", "{e}");
        let e = parse(&format!(
            "{GOOD}\n[catalog]\nplugin = \"x\"\nallow_dir = []\n"
        ))
        .expect_err("typo");
        assert!(e.message.contains("unknown field"), "{e}");
        // A failure policy belongs to a hook only; a hook's defaults to deny.
        let e = parse(&format!(
            "{GOOD}\n[catalog]\nplugin = \"x\"\non_failure = \"use_table\"\n"
        ))
        .expect_err("catalog on_failure");
        assert_eq!(e.field, "catalog.on_failure", "{e}");
        let c = parse(&format!("{GOOD}\n[hook]\nplugin = \"sni-denylist\"\n")).expect("hook");
        let hook = c.hook.expect("hook section");
        assert_eq!(
            hook.on_failure.unwrap_or_default(),
            crate::HookFailure::Deny
        );
        let c = parse(&format!(
            "{GOOD}\n[hook]\nplugin = \"sni-denylist\"\non_failure = \"use_table\"\n"
        ))
        .expect("hook");
        assert_eq!(
            c.hook.and_then(|h| h.on_failure),
            Some(crate::HookFailure::UseTable)
        );
    }
}
