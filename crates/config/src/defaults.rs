//! Every default of the gateway's configuration file, as a named constant with its unit, and the
//! functions serde calls to fill in a missing key.

/// Default gateway name, as Consul registers mesh gateways.
pub const DEFAULT_NAME: &str = "mesh-gateway";
/// Default datacenter name.
pub const DEFAULT_DATACENTER: &str = "dc1";
/// Default admin (metrics, readiness) address: loopback only, Consul's/Envoy's admin port.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:19000";
/// Default total time a client has to deliver its whole ClientHello, in milliseconds.
pub const DEFAULT_HELLO_TIMEOUT_MS: u64 = 10_000;
/// Default upstream connect timeout per attempt, in milliseconds (Consul's `connect_timeout_ms`).
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Default idle timeout of a relayed connection, in seconds (Envoy's tcp_proxy default: 1 h).
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 3_600;
/// Default time live connections get to finish after SIGTERM, in seconds.
pub const DEFAULT_DRAIN_TIMEOUT_SECS: u64 = 30;
/// Default maximum of concurrent downstream connections for the whole gateway (split evenly per core).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 100_000;
/// Default memory glommio registers for io_uring buffers per executor, in KiB. TCP does not use those
/// buffers, and glommio locks this memory, so it is kept at the minimum glommio accepts (512 KiB).
pub const DEFAULT_IO_MEMORY_KIB: usize = 512;
/// Default time between readiness turning 503 on SIGTERM and the listeners closing, in milliseconds:
/// about one health-check or blocking-query round for peers to stop sending new connections.
pub const DEFAULT_DRAIN_GRACE_MS: u64 = 1_000;
/// Default listen backlog: connections over the limit wait here, in the kernel.
pub const DEFAULT_BACKLOG: u32 = 1024;
/// Default per-call deadline of a plugin, in milliseconds.
pub const DEFAULT_PLUGIN_DEADLINE_MS: u64 = 1_000;
/// Default linear-memory cap of a plugin, in MiB.
pub const DEFAULT_PLUGIN_MEMORY_MIB: u64 = 64;
/// Default interval between catalog polls, in milliseconds. A polled catalog's granted directories are
/// also watched (inotify), so an edit there is polled at once; the interval bounds how late an edit is
/// noticed where inotify sees nothing (a network file system). Not lower: an unchanged poll of a
/// 10,000-file catalog costs ~29 ms of CPU (a `stat` per file), 12 % of a core at this interval
/// (docs/performance.md, `meshgate-control-bench`).
pub const DEFAULT_CATALOG_POLL_MS: u64 = 250;
/// A connection hook's per-call deadline is at most this, in milliseconds, whatever `deadline_ms` says:
/// it runs on a data-plane core, in the connection's path.
pub const HOOK_MAX_DEADLINE_MS: u64 = 20;
/// Default interval between probes of one remote gateway, in milliseconds.
pub const DEFAULT_PROBE_INTERVAL_MS: u64 = 1_000;
/// Default bound on one probe (a TCP connect), in milliseconds.
pub const DEFAULT_PROBE_TIMEOUT_MS: u64 = 1_000;
/// Default delay before probing again while a streak runs against the endpoint's state (a failure while
/// up, a success while down), in milliseconds: the verdict comes in about `(N-1) x` this, not `N x` the
/// interval.
pub const DEFAULT_PROBE_RECHECK_MS: u64 = 200;
/// Default consecutive failed probes that mark a live (or not yet judged) endpoint down.
pub const DEFAULT_PROBE_DOWN_AFTER: u32 = 3;
/// Default consecutive successful probes that mark a down endpoint up again.
pub const DEFAULT_PROBE_UP_AFTER: u32 = 2;
/// The router used when `[catalog]` is set and `[router]` is not.
pub const DEFAULT_ROUTER_PLUGIN: &str = "consul-router";

pub(crate) fn default_plugin_deadline_ms() -> u64 {
    DEFAULT_PLUGIN_DEADLINE_MS
}
pub(crate) fn default_plugin_memory_mib() -> u64 {
    DEFAULT_PLUGIN_MEMORY_MIB
}
pub(crate) fn default_catalog_poll_ms() -> u64 {
    DEFAULT_CATALOG_POLL_MS
}
