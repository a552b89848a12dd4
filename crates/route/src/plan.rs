//! Which endpoints a connection tries, in which order: load balancing within a priority group, failover
//! to the next group, and (for routes to probed endpoints, such as other datacenters' gateways) skipping
//! endpoints known dead and preferring near ones. Computed one attempt at a time from per-core state, so
//! a connection allocates nothing and the state is never shared between cores.

use crate::{LbPolicy, Route, RouteId};
use std::net::SocketAddr;

/// Attempts within one priority group before moving to the next (each attempt a different endpoint).
/// Retrying is safe because nothing has been forwarded upstream before a connect succeeds.
pub const MAX_ATTEMPTS_PER_GROUP: usize = 3;

/// What the data plane knows of an endpoint's reachability, from the gateway's probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Liveness {
    /// Not probed, or no verdict yet: tried like any endpoint.
    #[default]
    Unknown,
    /// Probes succeed; `rtt_micros` is the smoothed connect time.
    Up {
        /// Smoothed round-trip (TCP connect) time, in microseconds.
        rtt_micros: u32,
    },
    /// Probes fail: never tried (a connection must not wait on an endpoint known dead).
    Down,
}

/// An endpoint is "near" when its RTT is at most this multiple of the group's best, plus
/// [`NEAR_SLACK_MICROS`]: near endpoints are tried before far ones (and unprobed ones), and share load
/// among themselves. The slack keeps sub-millisecond jitter on a LAN from splitting equal endpoints.
pub const NEAR_FACTOR: u32 = 2;
/// See [`NEAR_FACTOR`].
pub const NEAR_SLACK_MICROS: u32 = 1_000;

/// Preference tier of an endpoint within its group: 0 near and up, 1 far or unknown, `None` down.
fn tier(l: Liveness, cutoff: Option<u32>) -> Option<u8> {
    match l {
        Liveness::Down => None,
        Liveness::Up { rtt_micros } if cutoff.is_some_and(|c| rtt_micros <= c) => Some(0),
        Liveness::Up { .. } | Liveness::Unknown => Some(1),
    }
}

/// Per-core load-balancing state: round-robin cursors per route and a random generator for
/// power-of-two choices. Reset when a new table is installed (route ids change).
#[derive(Debug, Clone)]
pub struct LbState {
    cursors: Vec<u32>,
    rng: u64,
}

impl LbState {
    /// State for a table of `routes` routes; `seed` should differ per core so cores don't move in step.
    pub fn new(routes: usize, seed: u64) -> Self {
        Self {
            cursors: vec![0; routes],
            // xorshift must not start at zero.
            rng: seed | 1,
        }
    }

    /// Forget the cursors, for a table of `routes` routes.
    pub fn reset(&mut self, routes: usize) {
        self.cursors.clear();
        self.cursors.resize(routes, 0);
    }

    fn next_cursor(&mut self, id: RouteId) -> usize {
        if id >= self.cursors.len() {
            self.cursors.resize(id + 1, 0);
        }
        let c = self.cursors[id];
        self.cursors[id] = c.wrapping_add(1);
        c as usize
    }

    fn random(&mut self) -> u64 {
        // xorshift64: fast, good enough to pick between endpoints.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

/// The attempt sequence of one connection on one route. Call [`Plan::next`] for each attempt.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    route: RouteId,
    group: usize,
    attempt: usize,
    start: usize,
    /// The round-robin cursor, taken once per connection and shared by all its groups.
    cursor: Option<usize>,
}

impl Plan {
    /// A fresh plan for route `route`.
    pub fn new(route: RouteId) -> Self {
        Self {
            route,
            group: 0,
            attempt: 0,
            start: 0,
            cursor: None,
        }
    }

    /// The next endpoint to try, or `None` when every group is exhausted. `active` returns this core's
    /// count of open connections to an endpoint (used by least-connections).
    pub fn next(
        &mut self,
        route: &Route,
        state: &mut LbState,
        active: impl Fn(&SocketAddr) -> u32,
    ) -> Option<SocketAddr> {
        self.next_with(route, state, active, None::<fn(&SocketAddr) -> Liveness>)
    }

    /// As [`Plan::next`], knowing each endpoint's [`Liveness`]: endpoints known down are skipped
    /// without an attempt (a group whose every endpoint is down is passed over at once, and `None`
    /// comes at once when every group is), near live endpoints come before far and unknown ones.
    /// `health` must answer the same for the whole plan (the caller holds one snapshot per connection).
    pub fn next_with_health(
        &mut self,
        route: &Route,
        state: &mut LbState,
        active: impl Fn(&SocketAddr) -> u32,
        health: impl Fn(&SocketAddr) -> Liveness,
    ) -> Option<SocketAddr> {
        self.next_with(route, state, active, Some(health))
    }

    fn next_with<H: Fn(&SocketAddr) -> Liveness>(
        &mut self,
        route: &Route,
        state: &mut LbState,
        active: impl Fn(&SocketAddr) -> u32,
        health: Option<H>,
    ) -> Option<SocketAddr> {
        loop {
            let group = route.groups.get(self.group)?;
            let n = group.endpoints.len();
            // Without health every endpoint is eligible, in one tier (no scan).
            let (eligible, cutoff) = match &health {
                None => (n, None),
                Some(h) => {
                    let mut best: Option<u32> = None;
                    let mut eligible = 0;
                    for e in &group.endpoints {
                        match h(e) {
                            Liveness::Down => {}
                            Liveness::Up { rtt_micros } => {
                                eligible += 1;
                                best = Some(best.map_or(rtt_micros, |b| b.min(rtt_micros)));
                            }
                            Liveness::Unknown => eligible += 1,
                        }
                    }
                    let cutoff = best.map(|b| {
                        b.saturating_mul(NEAR_FACTOR)
                            .saturating_add(NEAR_SLACK_MICROS)
                    });
                    (eligible, cutoff)
                }
            };
            if self.attempt >= eligible.min(MAX_ATTEMPTS_PER_GROUP) {
                self.group += 1;
                self.attempt = 0;
                continue;
            }
            if self.attempt == 0 {
                self.start = match route.lb {
                    LbPolicy::RoundRobin => {
                        let c = match self.cursor {
                            Some(c) => c,
                            None => *self.cursor.insert(state.next_cursor(self.route)),
                        };
                        c % n
                    }
                    LbPolicy::LeastConnections => {
                        let a = (state.random() % n as u64) as usize;
                        let b = (state.random() % n as u64) as usize;
                        if active(&group.endpoints[b]) < active(&group.endpoints[a]) {
                            b
                        } else {
                            a
                        }
                    }
                };
            }
            let pick = match &health {
                None => group.endpoints[(self.start + self.attempt) % n],
                // Tier 0 first, then tier 1; within a tier, rotated by the connection's start so
                // each tier shares load evenly whatever the others hold.
                Some(h) => {
                    let in_tier = |t: u8| {
                        group
                            .endpoints
                            .iter()
                            .copied()
                            .filter(move |e| tier(h(e), cutoff) == Some(t))
                    };
                    let near = in_tier(0).count();
                    let (t, k, size) = if self.attempt < near {
                        (0, self.attempt, near)
                    } else {
                        (1, self.attempt - near, eligible - near)
                    };
                    // Round robin rotates by the raw cursor (even over any tier size), p2c by its pick.
                    let offset = self.cursor.unwrap_or(self.start);
                    match in_tier(t).nth((offset + k) % size.max(1)) {
                        Some(e) => e,
                        // Unreachable while `health` is constant; if it is not, move on rather than loop.
                        None => {
                            self.group += 1;
                            self.attempt = 0;
                            continue;
                        }
                    }
                }
            };
            self.attempt += 1;
            return Some(pick);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RouteSpec, RouteTableBuilder};
    use proptest::prelude::*;

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    fn route(groups: Vec<Vec<u16>>, lb: LbPolicy) -> Route {
        let mut b = RouteTableBuilder::new();
        let mut spec = RouteSpec::new("a.example", vec![]);
        spec.groups = groups
            .into_iter()
            .map(|g| g.into_iter().map(addr).collect())
            .collect();
        spec.lb = lb;
        b.add(spec).expect("route");
        b.build().routes()[0].clone()
    }

    fn all(route: &Route, state: &mut LbState) -> Vec<u16> {
        let mut plan = Plan::new(0);
        std::iter::from_fn(|| plan.next(route, state, |_| 0))
            .map(|a| a.port())
            .collect()
    }

    #[test]
    fn round_robin_rotates_and_fails_over() {
        let r = route(vec![vec![1, 2, 3, 4], vec![10, 11]], LbPolicy::RoundRobin);
        let mut s = LbState::new(1, 42);
        assert_eq!(all(&r, &mut s), vec![1, 2, 3, 10, 11]);
        assert_eq!(all(&r, &mut s), vec![2, 3, 4, 11, 10]);
        assert_eq!(all(&r, &mut s), vec![3, 4, 1, 10, 11]);
    }

    #[test]
    fn least_connections_prefers_idle_endpoints() {
        let r = route(vec![vec![1, 2]], LbPolicy::LeastConnections);
        let mut s = LbState::new(1, 7);
        let busy = addr(1);
        let mut firsts = [0u32; 2];
        for _ in 0..200 {
            let mut plan = Plan::new(0);
            let first = plan
                .next(&r, &mut s, |a| if *a == busy { 100 } else { 0 })
                .expect("endpoint");
            firsts[usize::from(first.port() - 1)] += 1;
        }
        // Port 1 is picked only when both random choices land on it (about a quarter of the time).
        assert!(firsts[1] > firsts[0] * 2, "{firsts:?}");
    }

    fn all_with(route: &Route, state: &mut LbState, h: impl Fn(u16) -> Liveness) -> Vec<u16> {
        let mut plan = Plan::new(0);
        std::iter::from_fn(|| plan.next_with_health(route, state, |_| 0, |a| h(a.port())))
            .map(|a| a.port())
            .collect()
    }

    fn up(ms: u32) -> Liveness {
        Liveness::Up {
            rtt_micros: ms * 1000,
        }
    }

    #[test]
    fn endpoints_known_down_are_never_tried() {
        let r = route(vec![vec![1, 2, 3], vec![10, 11]], LbPolicy::RoundRobin);
        let mut s = LbState::new(1, 1);
        let h = |p| {
            if p == 2 {
                Liveness::Down
            } else {
                Liveness::Unknown
            }
        };
        for _ in 0..4 {
            let got = all_with(&r, &mut s, h);
            assert!(!got.contains(&2), "{got:?}");
            assert_eq!(got.len(), 4, "{got:?}");
        }
    }

    #[test]
    fn a_group_all_down_is_passed_over_and_all_down_ends_at_once() {
        let r = route(vec![vec![1, 2], vec![10, 11]], LbPolicy::RoundRobin);
        let mut s = LbState::new(1, 1);
        let got = all_with(&r, &mut s, |p| if p < 10 { Liveness::Down } else { up(1) });
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|&p| p >= 10), "{got:?}");
        assert!(all_with(&r, &mut s, |_| Liveness::Down).is_empty());
    }

    #[test]
    fn near_live_endpoints_come_first_and_share_the_load() {
        // 1 and 2 at 1-2 ms, 3 at 40 ms, 4 unknown: 3 and 4 only after both near ones.
        let r = route(vec![vec![1, 2, 3, 4]], LbPolicy::RoundRobin);
        let h = |p| match p {
            1 => up(1),
            2 => up(2),
            3 => up(40),
            _ => Liveness::Unknown,
        };
        let mut s = LbState::new(1, 1);
        let mut firsts = [0u32; 5];
        for _ in 0..8 {
            let got = all_with(&r, &mut s, h);
            assert_eq!(got.len(), 3);
            let mut near = got[..2].to_vec();
            near.sort_unstable();
            assert_eq!(near, vec![1, 2], "{got:?}");
            firsts[usize::from(got[0])] += 1;
        }
        assert_eq!(firsts[1], 4, "round robin among the near ones: {firsts:?}");
        assert_eq!(firsts[2], 4, "{firsts:?}");
    }

    #[test]
    fn an_empty_group_is_passed_over() {
        // A datacenter with no gateway left keeps its (empty) first group; failover groups follow.
        let r = route(vec![vec![], vec![10, 11]], LbPolicy::RoundRobin);
        let mut s = LbState::new(1, 1);
        assert_eq!(all(&r, &mut s).len(), 2);
        assert_eq!(all_with(&r, &mut s, |_| Liveness::Unknown).len(), 2);
    }

    #[test]
    fn without_health_nothing_changes() {
        let r = route(vec![vec![1, 2, 3, 4], vec![10, 11]], LbPolicy::RoundRobin);
        let (mut a, mut b) = (LbState::new(1, 3), LbState::new(1, 3));
        for _ in 0..5 {
            assert_eq!(all(&r, &mut a), all_with(&r, &mut b, |_| Liveness::Unknown));
        }
    }

    proptest! {
        /// With any liveness, a plan never tries a down endpoint, tries distinct endpoints, and tries
        /// every group's live endpoints up to the per-group cap, groups in order.
        #[test]
        fn plans_with_health_are_well_formed(sizes in proptest::collection::vec(1usize..6, 1..4), states in proptest::collection::vec(0u8..4, 24), seed in any::<u64>()) {
            let groups: Vec<Vec<u16>> = sizes.iter().enumerate()
                .map(|(g, &n)| (0..n).map(|i| (g * 100 + i) as u16 + 1).collect()).collect();
            let r = route(groups.clone(), LbPolicy::RoundRobin);
            let live = |p: u16| {
                let i = usize::from(p % 100) + 6 * usize::from(p / 100);
                match states[i % states.len()] {
                    0 => Liveness::Down,
                    1 => Liveness::Unknown,
                    k => up(u32::from(k) * 10),
                }
            };
            let mut s = LbState::new(1, seed);
            let got = all_with(&r, &mut s, live);
            prop_assert!(got.iter().all(|&p| live(p) != Liveness::Down));
            let want: usize = groups.iter()
                .map(|g| g.iter().filter(|&&p| live(p) != Liveness::Down).count().min(MAX_ATTEMPTS_PER_GROUP))
                .sum();
            prop_assert_eq!(got.len(), want);
            let mut seen = got.clone();
            seen.sort_unstable();
            seen.dedup();
            prop_assert_eq!(seen.len(), got.len());
            let group_of: Vec<u16> = got.iter().map(|p| (p - 1) / 100).collect();
            prop_assert!(group_of.windows(2).all(|w| w[0] <= w[1]));
        }
    }

    proptest! {
        /// Every plan tries distinct endpoints, at most three per group, groups in priority order.
        #[test]
        fn plans_are_well_formed(sizes in proptest::collection::vec(1usize..6, 1..4), lb in prop_oneof![Just(LbPolicy::RoundRobin), Just(LbPolicy::LeastConnections)], seed in any::<u64>(), rounds in 1usize..5) {
            let groups: Vec<Vec<u16>> = sizes.iter().enumerate()
                .map(|(g, &n)| (0..n).map(|i| (g * 100 + i) as u16 + 1).collect()).collect();
            let r = route(groups, lb);
            let mut s = LbState::new(1, seed);
            for _ in 0..rounds {
                let got = all(&r, &mut s);
                let want_len: usize = sizes.iter().map(|&n| n.min(MAX_ATTEMPTS_PER_GROUP)).sum();
                prop_assert_eq!(got.len(), want_len);
                let mut seen = got.clone();
                seen.sort_unstable();
                seen.dedup();
                prop_assert_eq!(seen.len(), got.len());
                let group_of: Vec<u16> = got.iter().map(|p| (p - 1) / 100).collect();
                prop_assert!(group_of.windows(2).all(|w| w[0] <= w[1]));
            }
        }
    }
}
