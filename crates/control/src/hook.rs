//! Adapts a Wasm connection-hook plugin to the engine's [`ConnectionHook`] trait: one plugin instance
//! per core, made on that core's thread.

use crate::error::ControlError;
use crate::plugins;
use meshgate_config::{Config, HookFailure, HOOK_MAX_DEADLINE_MS};
use meshgate_engine::hook::{ConnectionHook, HookDecision, HookFactory, HookVerdict};
use meshgate_plugin::types::Decision;
use meshgate_plugin::{HookPlugin, PluginHost};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
struct WasmHook {
    plugin: HookPlugin,
    settings: Vec<(String, String)>,
    on_failure: HookFailure,
}

impl ConnectionHook for WasmHook {
    fn decide(
        &mut self,
        sni: Option<&str>,
        alpn: &[Vec<u8>],
        peer: Option<SocketAddr>,
    ) -> Result<HookVerdict, String> {
        let alpn: Vec<String> = alpn
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        let source = peer.map(|p| p.to_string()).unwrap_or_default();
        let v = self
            .plugin
            .decide(&self.settings, sni, &alpn, &source)
            .map_err(|e| e.to_string())?;
        let decision = match v.decision {
            Decision::UseTable => HookDecision::UseTable,
            Decision::Deny => HookDecision::Deny,
            Decision::Forward(eps) => {
                let mut addrs = Vec::with_capacity(eps.len());
                for e in &eps {
                    // IP literals only: a data-plane core never resolves names.
                    addrs.push(
                        e.parse::<SocketAddr>()
                            .map_err(|err| format!("hook endpoint {e}: {err}"))?,
                    );
                }
                HookDecision::Forward(addrs)
            }
        };
        Ok(HookVerdict {
            decision,
            cacheable: v.cacheable,
        })
    }

    fn on_failure(&self) -> HookDecision {
        match self.on_failure {
            HookFailure::Deny => HookDecision::Deny,
            HookFailure::UseTable => HookDecision::UseTable,
        }
    }
}

/// The factory for `[hook]`, compiling the plugin once with `host`; `None` when no hook is configured.
pub fn factory(config: &Config, host: &PluginHost) -> Result<Option<HookFactory>, ControlError> {
    let Some(section) = config.hook.clone() else {
        return Ok(None);
    };
    let hook_error = |source| ControlError::Plugin {
        section: "[hook]",
        source,
    };
    let host = host.clone();
    let (name, component) = host
        .component(&section.plugin, &config.base_dir)
        .map_err(hook_error)?;
    let sandbox = plugins::sandbox(
        &section,
        &config.base_dir,
        Some(Duration::from_millis(HOOK_MAX_DEADLINE_MS)),
    );
    let settings = section.settings();
    // Instantiated and configured once here, so a plugin that does not fit the world or refuses its
    // settings is refused before any core starts.
    host.hook_from(name.clone(), component.clone(), sandbox.clone())
        .and_then(|mut p| p.configure(&settings))
        .map_err(hook_error)?;
    let on_failure = section.on_failure.unwrap_or_default();
    Ok(Some(Arc::new(move |core| {
        // A core without its hook would route around the policy: the engine refuses to start instead.
        host.hook_from(name.clone(), component.clone(), sandbox.clone())
            .and_then(|mut plugin| plugin.configure(&settings).map(|()| plugin))
            .map(|plugin| {
                Box::new(WasmHook {
                    plugin,
                    settings: settings.clone(),
                    on_failure,
                }) as Box<dyn ConnectionHook>
            })
            .map_err(|e| {
                tracing::error!(core, error = %e, "connection hook failed to load on this core");
                e.to_string()
            })
    })))
}
