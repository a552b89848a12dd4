//! The sandbox a plugin runs in: its limits (deadline, memory cap), the store each instance lives in, and
//! the discipline of one call — deadline armed, failure classified into a [`PluginError`], a failed
//! instance dropped so the next call gets a fresh one.

use crate::{Grants, PluginError, State};
use std::time::Duration;
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store};

/// Default per-call deadline.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(1);
/// Default linear-memory cap, in bytes.
pub const DEFAULT_MEMORY_CAP: usize = 64 << 20;
/// Epoch tick: the deadline's resolution.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Limits of one plugin.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// Per-call deadline.
    pub deadline: Duration,
    /// Linear-memory cap, in bytes.
    pub memory: usize,
    /// Capabilities.
    pub grants: Grants,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self {
            deadline: DEFAULT_DEADLINE,
            memory: DEFAULT_MEMORY_CAP,
            grants: Grants::default(),
        }
    }
}

/// Enforces the memory cap and remembers that it did, so a failed call is reported as a memory-cap hit.
pub(crate) struct Limiter {
    pub(crate) cap: usize,
    pub(crate) denied: bool,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.denied = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

/// A compiled plugin with its linker and limits: what a fresh instance is made from.
pub(crate) struct Loaded {
    pub(crate) name: String,
    pub(crate) engine: Engine,
    pub(crate) component: Component,
    pub(crate) linker: Linker<State>,
    pub(crate) sandbox: Sandbox,
}

impl Loaded {
    fn store(&self) -> Store<State> {
        let mut store = Store::new(
            &self.engine,
            State {
                plugin: self.name.clone(),
                grants: self.sandbox.grants.clone(),
                limiter: Limiter {
                    cap: self.sandbox.memory,
                    denied: false,
                },
            },
        );
        store.limiter(|s| &mut s.limiter);
        store
    }

    fn load_error(&self, e: wasmtime::Error) -> PluginError {
        PluginError::Load {
            plugin: self.name.clone(),
            message: format!("{e:#}"),
        }
    }

    /// Arms the deadline before a call.
    fn arm(&self, store: &mut Store<State>) {
        let ticks = (self.sandbox.deadline.as_millis() / EPOCH_TICK.as_millis()).max(1);
        store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX));
        store.data_mut().limiter.denied = false;
    }

    /// Turns a failed call into its typed error.
    fn classify(&self, store: &Store<State>, e: wasmtime::Error) -> PluginError {
        let plugin = self.name.clone();
        if matches!(
            e.downcast_ref::<wasmtime::Trap>(),
            Some(wasmtime::Trap::Interrupt)
        ) {
            PluginError::Deadline {
                plugin,
                ms: self.sandbox.deadline.as_millis(),
            }
        } else if store.data().limiter.denied {
            PluginError::Memory {
                plugin,
                mib: self.sandbox.memory >> 20,
            }
        } else {
            PluginError::Trap {
                plugin,
                message: format!("{e:#}"),
            }
        }
    }
}

/// The live instance, made on first use and after a failure.
pub(crate) fn live<'a, W>(
    loaded: &Loaded,
    slot: &'a mut Option<(Store<State>, W)>,
    instantiate: impl FnOnce(&mut Store<State>, &Component, &Linker<State>) -> wasmtime::Result<W>,
) -> Result<&'a mut (Store<State>, W), PluginError> {
    if slot.is_none() {
        let mut store = loaded.store();
        loaded.arm(&mut store);
        let inst = instantiate(&mut store, &loaded.component, &loaded.linker)
            .map_err(|e| loaded.load_error(e))?;
        *slot = Some((store, inst));
    }
    slot.as_mut().ok_or_else(|| PluginError::Load {
        plugin: loaded.name.clone(),
        message: "no instance".into(),
    })
}

/// One call on the live instance (made if needed). The plugin's own `err` is `Refused`; a trap, a
/// deadline or a memory-cap hit is classified, and the instance is dropped so the next call gets a
/// fresh one.
pub(crate) fn call<W, T>(
    loaded: &Loaded,
    slot: &mut Option<(Store<State>, W)>,
    instantiate: impl FnOnce(&mut Store<State>, &Component, &Linker<State>) -> wasmtime::Result<W>,
    f: impl FnOnce(&mut Store<State>, &W) -> wasmtime::Result<Result<T, String>>,
) -> Result<T, PluginError> {
    let (store, inst) = live(loaded, slot, instantiate)?;
    loaded.arm(store);
    match f(store, inst) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(message)) => Err(PluginError::Refused {
            plugin: loaded.name.clone(),
            message,
        }),
        Err(e) => {
            let err = loaded.classify(store, e);
            *slot = None;
            Err(err)
        }
    }
}
