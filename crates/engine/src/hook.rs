//! The optional per-connection hook: a policy consulted after the ClientHello, before the route table.
//!
//! The engine knows only this trait; the binary plugs a Wasm plugin in. Each core gets its own hook
//! object (made on that core's thread by the [`HookFactory`]), so a call never crosses cores. Cacheable
//! verdicts are kept per core, per SNI, until the next table change. A failing call (trap, deadline)
//! decides what [`ConnectionHook::on_failure`] says — deny unless the hook was configured to fail open,
//! and for the name's next [`HOOK_FAILURE_REPEAT`] connections on that core without a call —
//! and a hook that cannot be made on a core stops the engine's start: a deny-list must not silently
//! disappear from one core.

use std::net::SocketAddr;
use std::sync::Arc;

/// Most cached verdicts per core; the cache is cleared when full (a name flood cannot grow it).
pub const HOOK_CACHE_MAX: usize = 10_000;

/// After a failed call for a name, the core decides that name's next connections by `on_failure` without
/// calling, this many times, then asks the hook again. A failing call costs the core up to the hook's
/// deadline, and the core does nothing else meanwhile: without this, a client repeating a name that makes
/// the hook loop stalled every connection on the core (measured in docs/reliability.md). Counted, not
/// timed, so that the engine needs no clock; counted as cache hits.
pub const HOOK_FAILURE_REPEAT: u32 = 64;

/// What the hook decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookDecision {
    /// Route by the table.
    UseTable,
    /// Close the connection.
    Deny,
    /// Send it to these endpoints.
    Forward(Vec<SocketAddr>),
}

/// A decision, and whether it may be reused for the same SNI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookVerdict {
    /// The decision.
    pub decision: HookDecision,
    /// Same SNI, same decision (until the table changes).
    pub cacheable: bool,
}

/// A per-connection policy, one instance per core.
pub trait ConnectionHook {
    /// Decides for one connection. An error means the hook could not decide: [`Self::on_failure`]
    /// does.
    fn decide(
        &mut self,
        sni: Option<&str>,
        alpn: &[Vec<u8>],
        peer: Option<SocketAddr>,
    ) -> Result<HookVerdict, String>;

    /// The decision when [`Self::decide`] fails. Deny by default: a hook is usually a policy (a
    /// deny-list, an export control), and letting the table answer would defeat it.
    fn on_failure(&self) -> HookDecision {
        HookDecision::Deny
    }
}

/// The hook factory in force, as the cores find it (`None`: no hook).
#[derive(Clone, Default)]
pub(crate) struct Installed(pub(crate) Option<HookFactory>);

impl std::fmt::Debug for Installed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "hook" } else { "no hook" })
    }
}

/// Makes core `n`'s hook, on core `n`'s thread. An error stops the engine's start (the message says
/// why the hook could not be made).
pub type HookFactory = Arc<dyn Fn(usize) -> Result<Box<dyn ConnectionHook>, String> + Send + Sync>;
