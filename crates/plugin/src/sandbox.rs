//! The sandbox a plugin runs in: its limits (deadline, memory cap), the store each instance lives in, and
//! the discipline of one call — deadline armed, failure classified into a [`PluginError`], a failed
//! instance dropped so the next call gets a fresh one.

use crate::bindings::World;
use crate::{Grants, PluginError, State};
use std::time::{Duration, Instant};
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store};

/// Default per-call deadline.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(1);
/// Default linear-memory cap, in bytes.
pub const DEFAULT_MEMORY_CAP: usize = 64 << 20;
/// Epoch tick: the deadline's resolution. 2 ms keeps a hook's few-millisecond deadline meaningful for
/// 500 wake-ups a second of one thread.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// Epoch ticks to arm for `budget`. The epoch may tick an instant after the call is armed, so the count is
/// rounded up and one tick added: the call always gets at least its budget (at most one tick more).
/// With a plain `budget / tick`, a 10 ms budget on a 10 ms tick armed one tick, and a hook call of a few
/// microseconds that straddled a tick was interrupted: honest connections were refused at random (about
/// 0.1 % of them in the fault runs).
pub fn deadline_ticks(budget: Duration) -> u64 {
    let tick = EPOCH_TICK.as_micros().max(1);
    u64::try_from(budget.as_micros().div_ceil(tick) + 1).unwrap_or(u64::MAX)
}

/// Limits of one plugin.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// Per-call deadline.
    pub deadline: Duration,
    /// Linear-memory cap, in bytes: one total across all of an instance's memories.
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

/// Largest total of table elements across an instance's tables.
pub(crate) const TABLE_ELEMENTS_CAP: usize = 1 << 20;

/// Enforces the memory cap and remembers that it did, so a failed call is reported as a memory-cap hit.
///
/// The cap is one total across every linear memory (and every table) of the instance: wasmtime asks the
/// limiter about each memory separately, so a per-memory check would give a component with N memories N
/// times the cap. Memories only grow and each instance has its own store, so a running total is exact.
pub(crate) struct Limiter {
    pub(crate) cap: usize,
    pub(crate) denied: bool,
    /// Bytes of linear memory granted so far, all memories together.
    pub(crate) memory_total: usize,
    /// Table elements granted so far, all tables together.
    pub(crate) table_total: usize,
}

impl Limiter {
    pub(crate) fn new(cap: usize) -> Limiter {
        Limiter {
            cap,
            denied: false,
            memory_total: 0,
            table_total: 0,
        }
    }
}

/// The running total once one memory or table goes from `current` to `desired`, if within `cap`.
fn grown_total(total: usize, current: usize, desired: usize, cap: usize) -> Option<usize> {
    total
        .checked_sub(current.min(total))
        .and_then(|t| t.checked_add(desired))
        .filter(|t| *t <= cap)
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        match grown_total(self.memory_total, current, desired, self.cap) {
            Some(total) => {
                self.memory_total = total;
                Ok(true)
            }
            None => {
                self.denied = true;
                Ok(false)
            }
        }
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        match grown_total(self.table_total, current, desired, TABLE_ELEMENTS_CAP) {
            Some(total) => {
                self.table_total = total;
                Ok(true)
            }
            None => {
                self.denied = true;
                Ok(false)
            }
        }
    }
}

/// A compiled plugin with its linker and limits: what a fresh instance is made from.
pub(crate) struct Loaded {
    pub(crate) name: String,
    /// Keeps the epoch ticking for as long as this plugin can be called.
    pub(crate) _ticker: std::sync::Arc<crate::host::Ticker>,
    pub(crate) engine: Engine,
    pub(crate) component: Component,
    pub(crate) linker: Linker<State>,
    pub(crate) sandbox: Sandbox,
    /// Shared by every instance made from this plugin (see `LogBudget`).
    pub(crate) log_budget: std::sync::Arc<std::sync::Mutex<crate::grants::LogBudget>>,
    /// The settings `configure` accepted; every instance made later (after a trap) is configured with
    /// them before its first call. `None`: never configured (tests that call the exports directly).
    pub(crate) settings: Option<Vec<(String, String)>>,
}

impl Loaded {
    fn store(&self) -> Store<State> {
        let mut store = Store::new(
            &self.engine,
            State {
                plugin: self.name.clone(),
                grants: self.sandbox.grants.clone(),
                limiter: Limiter::new(self.sandbox.memory),
                deadline: Instant::now() + self.sandbox.deadline,
                log_budget: self.log_budget.clone(),
                changed_files: None,
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

    /// Arms the deadline before a call: the epoch deadline bounds the plugin's own code, the instant in
    /// its state bounds the host calls it makes (they block outside Wasm, where epochs do not reach).
    fn arm(&self, store: &mut Store<State>) {
        self.arm_for(store, self.sandbox.deadline);
    }

    fn arm_for(&self, store: &mut Store<State>, budget: Duration) {
        store.set_epoch_deadline(deadline_ticks(budget));
        let state = store.data_mut();
        state.limiter.denied = false;
        state.deadline = Instant::now() + budget;
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

/// Instantiation budget at load time (off the data path): a hook's 5 ms call deadline is one epoch
/// tick, which a busy machine could overrun while instantiating, failing the start for nothing.
pub const LOAD_BUDGET: Duration = Duration::from_millis(500);

/// The live instance, instantiated (and configured) at load time if there is none (within
/// [`LOAD_BUDGET`], or the call deadline when that is longer).
pub(crate) fn live<'a, W: World>(
    loaded: &Loaded,
    slot: &'a mut Option<(Store<State>, W)>,
) -> Result<&'a mut (Store<State>, W), PluginError> {
    live_within(loaded, slot, LOAD_BUDGET.max(loaded.sandbox.deadline))
}

/// As [`live`], instantiating and configuring within `budget`.
fn live_within<'a, W: World>(
    loaded: &Loaded,
    slot: &'a mut Option<(Store<State>, W)>,
    budget: Duration,
) -> Result<&'a mut (Store<State>, W), PluginError> {
    if slot.is_none() {
        let mut store = loaded.store();
        loaded.arm_for(&mut store, budget);
        let inst = W::instantiate(&mut store, &loaded.component, &loaded.linker).map_err(|e| {
            // Memories are made at instantiation: a cap hit there is a memory error, not a bad component.
            if store.data().limiter.denied {
                PluginError::Memory {
                    plugin: loaded.name.clone(),
                    mib: loaded.sandbox.memory >> 20,
                }
            } else {
                loaded.load_error(e)
            }
        })?;
        if let Some(settings) = &loaded.settings {
            loaded.arm_for(&mut store, budget);
            match inst.configure(&mut store, settings) {
                Ok(Ok(())) => {}
                Ok(Err(message)) => {
                    return Err(PluginError::Config {
                        plugin: loaded.name.clone(),
                        message,
                    })
                }
                Err(e) => return Err(loaded.classify(&store, e)),
            }
        }
        *slot = Some((store, inst));
    }
    slot.as_mut().ok_or_else(|| PluginError::Load {
        plugin: loaded.name.clone(),
        message: "no instance".into(),
    })
}

/// Sets the settings every instance is configured with and configures a fresh instance now (the old
/// one, if any, stays only if the new settings are accepted).
pub(crate) fn configure<W: World>(
    loaded: &mut Loaded,
    slot: &mut Option<(Store<State>, W)>,
    settings: &[(String, String)],
) -> Result<(), PluginError> {
    let previous = loaded.settings.replace(settings.to_vec());
    let mut fresh = None;
    match live(loaded, &mut fresh) {
        Ok(_) => {
            *slot = fresh;
            Ok(())
        }
        Err(e) => {
            loaded.settings = previous;
            Err(e)
        }
    }
}

/// One call on the live instance (made if needed). The plugin's own `err` is `Refused`; a trap, a
/// deadline or a memory-cap hit is classified, and the instance is dropped so the next call gets a
/// fresh one.
pub(crate) fn call<W: World, T>(
    loaded: &Loaded,
    slot: &mut Option<(Store<State>, W)>,
    f: impl FnOnce(&mut Store<State>, &W) -> wasmtime::Result<Result<T, String>>,
) -> Result<T, PluginError> {
    // Instantiating again after a failure happens in the call's path (a hook's: a data-plane core's),
    // so it gets the call's deadline, not the load budget.
    let (store, inst) = live_within(loaded, slot, loaded.sandbox.deadline)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_always_gets_at_least_its_budget_and_at_most_one_tick_more() {
        for ms in [0u64, 1, 2, 3, 5, 10, 19, 20, 1000, 60_000] {
            let budget = Duration::from_millis(ms);
            let ticks = u32::try_from(deadline_ticks(budget)).expect("small");
            // Worst case the first tick comes right after arming: the call still runs (ticks - 1) ticks.
            let least = EPOCH_TICK * (ticks - 1);
            assert!(least >= budget, "{ms} ms: only {least:?} guaranteed");
            assert!(
                least <= budget + EPOCH_TICK,
                "{ms} ms: {least:?} is too generous"
            );
        }
    }
}
