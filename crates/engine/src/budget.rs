//! The descriptor budget (pure): how many connections a process can serve with the descriptors
//! `RLIMIT_NOFILE` allows, so a limit the process cannot honour is lowered at start (with a warning)
//! instead of failing connections one by one once descriptors run out (an upstream socket that cannot
//! be made closes its connection). A connection holds two sockets. Splice pipes (two descriptors each)
//! come from a per-core allowance taken out of the budget first; past it, a direction relays through a
//! buffer instead, so pipes never take a socket's descriptor.

use meshgate_config::RelayMode;

/// Descriptors kept for everything but connections: io_uring rings, epoll sets, listeners, the admin
/// endpoint, plugin files, logs. The control plane's own sockets (Consul watches) come on top
/// (`GatewaySettings::control_fds`).
pub const RESERVED_FDS: u64 = 256;
/// Most splice pipes (leased and idle) per core.
pub const MAX_PIPES_PER_CORE: usize = 512;
/// Descriptors one connection holds: its two sockets.
pub const PER_CONNECTION: u64 = 2;

/// What the process can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Connections for the whole gateway (what `max_connections` becomes).
    pub max_connections: u32,
    /// Splice pipes each core may hold, leased and idle together.
    pub pipes_per_core: usize,
    /// Whether `max_connections` had to be lowered to fit.
    pub lowered: bool,
}

/// The budget for `requested` connections on `workers` cores with `nofile` descriptors; an error
/// when the limit leaves room for fewer connections than cores.
pub fn budget(
    requested: u32,
    workers: usize,
    relay: RelayMode,
    nofile: u64,
    control_fds: u64,
) -> Result<Budget, String> {
    let workers = workers.max(1) as u64;
    let room = nofile.saturating_sub(RESERVED_FDS.saturating_add(control_fds));
    // Pipes get at most a quarter of the room: they speed bulk transfers up, sockets are the service.
    let pipe_fds = match relay {
        RelayMode::Splice => (workers * 2 * MAX_PIPES_PER_CORE as u64).min(room / 4),
        RelayMode::Buffered => 0,
    };
    let pipes_per_core = pipe_fds / 2 / workers;
    let fits = (room - pipes_per_core * 2 * workers) / PER_CONNECTION;
    if fits < workers {
        return Err(format!(
            "the descriptor limit (RLIMIT_NOFILE) is {nofile}: after {RESERVED_FDS} reserved, not one connection per core fits; raise it (ulimit -n, LimitNOFILE=, --ulimit nofile=)"
        ));
    }
    let max = u64::from(requested).min(fits);
    Ok(Budget {
        max_connections: u32::try_from(max).unwrap_or(u32::MAX),
        pipes_per_core: pipes_per_core as usize,
        lowered: max < u64::from(requested),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_limit_is_lowered_to_what_descriptors_allow() {
        // This machine's hard limit, one core: the idle-connection bench's 9,000 still fit.
        let b = budget(100_000, 1, RelayMode::Splice, 20_000, 0).expect("fits");
        assert_eq!(b.pipes_per_core, MAX_PIPES_PER_CORE);
        assert_eq!(b.max_connections, (20_000 - 256 - 1024) / 2);
        assert!(b.lowered);
        let small = budget(100_000, 1, RelayMode::Splice, 300, 0).expect("fits");
        assert_eq!((small.max_connections, small.pipes_per_core), (17, 5));
        let buffered = budget(100_000, 1, RelayMode::Buffered, 300, 0).expect("fits");
        assert_eq!((buffered.max_connections, buffered.pipes_per_core), (22, 0));
    }

    #[test]
    fn a_limit_that_fits_stays() {
        let b = budget(1_000, 4, RelayMode::Splice, 1 << 20, 0).expect("fits");
        assert_eq!(b.max_connections, 1_000);
        assert!(!b.lowered);
    }

    #[test]
    fn the_control_planes_sockets_come_out_of_the_room() {
        let b = budget(100_000, 1, RelayMode::Buffered, 20_000, 1_024).expect("fits");
        assert_eq!(b.max_connections, (20_000 - 256 - 1_024) / 2);
    }

    #[test]
    fn no_room_is_an_error_naming_the_limit() {
        let e = budget(100, 4, RelayMode::Splice, 260, 0).expect_err("no room");
        assert!(e.contains("RLIMIT_NOFILE") && e.contains("260"), "{e}");
    }

    proptest::proptest! {
        /// Whatever the inputs, sockets and pipes together never need more than the limit holds.
        #[test]
        fn never_over_the_limit(req in 1u32..1_000_000, workers in 1usize..64, nofile in 0u64..2_000_000, splice: bool) {
            let relay = if splice { RelayMode::Splice } else { RelayMode::Buffered };
            if let Ok(b) = budget(req, workers, relay, nofile, 0) {
                let used = u64::from(b.max_connections) * PER_CONNECTION
                    + (b.pipes_per_core * 2 * workers) as u64
                    + RESERVED_FDS;
                proptest::prop_assert!(used <= nofile);
                proptest::prop_assert!(b.max_connections <= req);
            }
        }
    }
}
