//! Which endpoints a connection tries, in which order: load balancing within a priority group, failover
//! to the next group, and (for routes to probed endpoints, such as other datacenters' gateways) skipping
//! endpoints known dead and preferring near ones. Computed one attempt at a time from per-core state, so
//! a connection allocates nothing and the state is never shared between cores.
//!
//! A weighted group ([`EndpointGroup::weights`](crate::EndpointGroup::weights)) chooses only the first
//! attempt by weight; its retries go on in list order from there, so a failing canary falls back to the
//! stable endpoints beside it. Round robin makes the choice exact and interleaved: over every `W`
//! consecutive connections of a core (`W` the sum of the weights) each endpoint is first exactly its
//! weight's times, spread out (a 90/10 split sends the 10 one by one, not in a run). Least connections
//! draws two endpoints by weight and keeps the one with fewer active connections per unit of weight.
//! Weighted plans still allocate nothing: the sums are recomputed per connection, one pass over the
//! group (as the health scan already makes), rather than stored beside a group the engine may build.

use crate::{EndpointGroup, LbPolicy, Route, RouteId};
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
    ///
    /// In a weighted group the first attempt is chosen by weight among the endpoints not down (the first
    /// of those not down when all of them weigh 0), and RTT does not reorder it: the operator's split
    /// wins over the preference for near endpoints, which would otherwise send a near canary everything.
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
            if let Some(weights) = group.weights_in_force() {
                match self.weighted(route.lb, group, weights, state, &active, health.as_ref()) {
                    Some(pick) => {
                        self.attempt += 1;
                        return Some(pick);
                    }
                    None => {
                        self.group += 1;
                        self.attempt = 0;
                        continue;
                    }
                }
            }
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

    /// Attempt `self.attempt` in a weighted group (its weights and their sum), or `None` when the
    /// group is done.
    fn weighted<H: Fn(&SocketAddr) -> Liveness>(
        &mut self,
        lb: LbPolicy,
        group: &EndpointGroup,
        (weights, total): (&[u32], u32),
        state: &mut LbState,
        active: &impl Fn(&SocketAddr) -> u32,
        health: Option<&H>,
    ) -> Option<SocketAddr> {
        let n = group.endpoints.len();
        let live = |i: usize| health.is_none_or(|h| h(&group.endpoints[i]) != Liveness::Down);
        let eligible = match health {
            None => n,
            Some(_) => (0..n).filter(|&i| live(i)).count(),
        };
        if self.attempt >= eligible.min(MAX_ATTEMPTS_PER_GROUP) {
            return None;
        }
        if self.attempt == 0 {
            // A down endpoint weighs nothing; without health the sum is the group's.
            let weight = |i: usize| if live(i) { u64::from(weights[i]) } else { 0 };
            let total = match health {
                None => u64::from(total),
                Some(_) => (0..n).map(weight).sum(),
            };
            self.start = if total == 0 {
                // Only standbys are left: the first of them that is not down.
                (0..n).find(|&i| live(i))?
            } else {
                match lb {
                    LbPolicy::RoundRobin => {
                        let c = match self.cursor {
                            Some(c) => c,
                            None => *self.cursor.insert(state.next_cursor(self.route)),
                        };
                        spread(weight, n, total, c as u64 % total)
                    }
                    LbPolicy::LeastConnections => {
                        let a = at_weight(weight, n, state.random() % total);
                        let b = at_weight(weight, n, state.random() % total);
                        // Fewer active connections per unit of weight: active_b / w_b < active_a / w_a.
                        let load = |i: usize| u64::from(active(&group.endpoints[i]));
                        if load(b) * weight(a) < load(a) * weight(b) {
                            b
                        } else {
                            a
                        }
                    }
                }
            };
        }
        // Retries: the next endpoints not down, in list order from the first pick (standbys included).
        let i = (0..n)
            .map(|k| (self.start + k) % n)
            .filter(|&i| live(i))
            .nth(self.attempt)?;
        Some(group.endpoints[i])
    }
}

/// The endpoint at position `k` (< `total`) of a round-robin cycle of `total` connections in which
/// endpoint `i` appears `weight(i)` times, evenly spread (`total` is the sum of the weights).
///
/// The first endpoint with a weight `w` takes its places out of the cycle's `R` by a Bresenham step:
/// position `k` is its own when `⌊(k·w + ⌊R/2⌋) / R⌋` is larger at `k + 1` than at `k`. The other
/// positions, renumbered in order, form a cycle of `R - w` that the remaining endpoints split the same
/// way. So every endpoint is first exactly its weight's times in any `total` consecutive positions
/// (each level's count is periodic in its cycle, and the renumbering hands the next level consecutive
/// numbers), and a small weight's places are evenly spaced (90/10: one of the 10 in each run of 10).
/// Chosen over a multiplicative stride (`k·S mod W`, then prefix sums), as exact but spread well only
/// for some `S mod W`: with others, ten connections of a 90/10 split hold the 10 twice, the next ten
/// not at all. Products stay below 2^64: `k < total <= u32::MAX` and `w <= total`.
fn spread(weight: impl Fn(usize) -> u64, n: usize, total: u64, mut k: u64) -> usize {
    let mut rest = total;
    let mut last = 0;
    for i in 0..n {
        let w = weight(i);
        if w == 0 {
            continue;
        }
        last = i;
        if w >= rest {
            return i;
        }
        let half = rest / 2;
        let before = (k * w + half) / rest;
        if ((k + 1) * w + half) / rest > before {
            return i;
        }
        k -= before;
        rest -= w;
    }
    // Unreachable while `total` is the sum of the weights: the last endpoint with a weight takes all.
    last
}

/// The endpoint whose share of `0..total` holds `r` (shares laid out in list order), for random draws.
fn at_weight(weight: impl Fn(usize) -> u64, n: usize, mut r: u64) -> usize {
    let mut last = 0;
    for i in 0..n {
        let w = weight(i);
        if r < w {
            return i;
        }
        if w > 0 {
            last = i;
        }
        r -= w;
    }
    last
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
        weighted_route(groups, vec![], lb)
    }

    fn weighted_route(groups: Vec<Vec<u16>>, weights: Vec<Vec<u32>>, lb: LbPolicy) -> Route {
        let mut b = RouteTableBuilder::new();
        let mut spec = RouteSpec::new("a.example", vec![]);
        spec.groups = groups
            .into_iter()
            .map(|g| g.into_iter().map(addr).collect())
            .collect();
        spec.weights = weights;
        spec.lb = lb;
        b.add(spec).expect("route");
        (*b.build().routes()[0]).clone()
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

    /// The first endpoint of each of `n` connections.
    fn firsts(route: &Route, state: &mut LbState, n: usize) -> Vec<u16> {
        (0..n)
            .map(|_| {
                let mut plan = Plan::new(0);
                plan.next(route, state, |_| 0).expect("endpoint").port()
            })
            .collect()
    }

    fn count(ports: &[u16], port: u16) -> usize {
        ports.iter().filter(|&&p| p == port).count()
    }

    #[test]
    fn a_weighted_split_is_exact_and_interleaved() {
        let r = weighted_route(vec![vec![1, 2]], vec![vec![90, 10]], LbPolicy::RoundRobin);
        let got = firsts(&r, &mut LbState::new(1, 5), 1000);
        assert_eq!((count(&got, 1), count(&got, 2)), (900, 100));
        // Not 90 in a row then 10: every run of ten connections holds the canary once.
        assert_eq!(count(&got[..10], 2), 1, "{:?}", &got[..10]);
        for run in got.windows(10) {
            assert_eq!(count(run, 2), 1, "{run:?}");
        }

        // The same split with two stable endpoints (as a config `split` compiles it: 9, 9, 2): in any
        // run of connections the canary is within one of its exact share.
        let r = weighted_route(
            vec![vec![1, 2, 3]],
            vec![vec![9, 9, 2]],
            LbPolicy::RoundRobin,
        );
        let got = firsts(&r, &mut LbState::new(1, 5), 200);
        assert_eq!(count(&got[..10], 3), 1, "{:?}", &got[..10]);
        for m in 1..=40 {
            for run in got.windows(m) {
                let off = (count(run, 3) * 10).abs_diff(m);
                assert!(off <= 10, "{m}: {run:?}");
            }
        }
    }

    #[test]
    fn a_one_one_two_split_is_exact_in_every_cycle() {
        let r = weighted_route(
            vec![vec![1, 2, 3]],
            vec![vec![1, 1, 2]],
            LbPolicy::RoundRobin,
        );
        let got = firsts(&r, &mut LbState::new(1, 5), 400);
        for cycle in got.windows(4) {
            let counts = (count(cycle, 1), count(cycle, 2), count(cycle, 3));
            assert_eq!(counts, (1, 1, 2), "{cycle:?}");
        }
    }

    #[test]
    fn retries_go_on_in_list_order_so_a_failing_canary_falls_back_to_stable() {
        let r = weighted_route(
            vec![vec![1, 2, 3], vec![10]],
            vec![vec![45, 45, 10]],
            LbPolicy::RoundRobin,
        );
        let mut s = LbState::new(1, 5);
        let mut canary_first = 0;
        for _ in 0..100 {
            let got = all(&r, &mut s);
            let want = match got[0] {
                1 => vec![1, 2, 3, 10],
                2 => vec![2, 3, 1, 10],
                _ => vec![3, 1, 2, 10],
            };
            assert_eq!(got, want);
            canary_first += usize::from(got[0] == 3);
        }
        assert_eq!(canary_first, 10);
    }

    #[test]
    fn weight_zero_is_a_standby_never_first_but_still_a_retry() {
        for lb in [LbPolicy::RoundRobin, LbPolicy::LeastConnections] {
            let r = weighted_route(vec![vec![1, 2, 3]], vec![vec![1, 0, 1]], lb);
            let mut s = LbState::new(1, 9);
            for _ in 0..50 {
                let got = all(&r, &mut s);
                assert_ne!(got[0], 2, "{lb:?}: {got:?}");
                assert_eq!(got.len(), 3, "{lb:?}: {got:?}");
                assert!(got.contains(&2), "{lb:?}: {got:?}");
            }
            // With the weighted endpoints down, the standby takes the connection.
            let got = all_with(&r, &mut s, |p| if p == 2 { up(1) } else { Liveness::Down });
            assert_eq!(got, vec![2], "{lb:?}");
        }
    }

    #[test]
    fn weighted_least_connections_follows_the_weights() {
        // 10_000 draws at 10%: mean 1000, standard deviation 30; the seed fixes the outcome, the
        // tolerance (5 deviations) says any seed would do.
        let r = weighted_route(
            vec![vec![1, 2]],
            vec![vec![90, 10]],
            LbPolicy::LeastConnections,
        );
        let got = firsts(&r, &mut LbState::new(1, 0x5eed), 10_000);
        let canary = count(&got, 2);
        assert!((850..=1150).contains(&canary), "{canary}");

        // Active connections count per unit of weight: 9 on the 90 and 1 on the 10 are even loads (a
        // draw keeps its first pick), so the split holds; 5 on the canary alone is heavy, and it is
        // first only when both draws land on it (1%: mean 100, deviation 10).
        let mut s = LbState::new(1, 0x5eed);
        let even = |a: &SocketAddr| -> u32 {
            if a.port() == 1 {
                9
            } else {
                1
            }
        };
        let heavy = |a: &SocketAddr| -> u32 {
            if a.port() == 1 {
                0
            } else {
                5
            }
        };
        for (load, range) in [
            (&even as &dyn Fn(&SocketAddr) -> u32, 850..=1150),
            (&heavy, 50..=150),
        ] {
            let canary = (0..10_000)
                .filter(|_| Plan::new(0).next(&r, &mut s, load).map(|a| a.port()) == Some(2))
                .count();
            assert!(range.contains(&canary), "{canary}");
        }
    }

    #[test]
    fn weighted_groups_never_try_down_endpoints_and_ignore_rtt_tiers() {
        for lb in [LbPolicy::RoundRobin, LbPolicy::LeastConnections] {
            let r = weighted_route(
                vec![vec![1, 2, 3, 4], vec![10, 11]],
                vec![vec![40, 40, 10, 10]],
                lb,
            );
            let mut s = LbState::new(1, 3);
            let h = |p| match p {
                2 | 10 => Liveness::Down,
                _ => Liveness::Unknown,
            };
            for _ in 0..100 {
                let got = all_with(&r, &mut s, h);
                assert!(!got.contains(&2) && !got.contains(&10), "{got:?}");
                assert_eq!(got.len(), 4, "{got:?}");
            }
        }
        // Round robin over the live ones keeps their proportions (40:10:10), RTT notwithstanding: the
        // near endpoint does not take the far ones' share.
        let r = weighted_route(
            vec![vec![1, 2, 3]],
            vec![vec![4, 1, 1]],
            LbPolicy::RoundRobin,
        );
        let h = |p| if p == 3 { up(1) } else { up(40) };
        let mut s = LbState::new(1, 3);
        let got: Vec<u16> = (0..60).map(|_| all_with(&r, &mut s, h)[0]).collect();
        assert_eq!(
            (count(&got, 1), count(&got, 2), count(&got, 3)),
            (40, 10, 10)
        );
    }

    proptest! {
        /// With any liveness, a plan never tries a down endpoint, tries distinct endpoints, and tries
        /// every group's live endpoints up to the per-group cap, groups in order.
        #[test]
        fn plans_with_health_are_well_formed(sizes in proptest::collection::vec(1usize..6, 1..4), states in proptest::collection::vec(0u8..4, 24), seed in any::<u64>()) {
            let groups = port_groups(&sizes);
            let r = route(groups.clone(), LbPolicy::RoundRobin);
            let live = |p: u16| liveness(&states, p);
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
            let groups = port_groups(&sizes);
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

    /// Groups of `sizes` endpoints, with ports `g * 100 + i + 1` (group `g`, endpoint `i`).
    fn port_groups(sizes: &[usize]) -> Vec<Vec<u16>> {
        sizes
            .iter()
            .enumerate()
            .map(|(g, &n)| (0..n).map(|i| (g * 100 + i) as u16 + 1).collect())
            .collect()
    }

    /// A liveness for port `p` of [`port_groups`], drawn from `states` (0 down, 1 unknown, else up
    /// with an RTT of 10 × the state).
    fn liveness(states: &[u8], p: u16) -> Liveness {
        let i = usize::from(p % 100) + 6 * usize::from(p / 100);
        match states[i % states.len()] {
            0 => Liveness::Down,
            1 => Liveness::Unknown,
            k => up(u32::from(k) * 10),
        }
    }

    /// Groups of `sizes` with ports `g * 100 + i + 1`, and their weights from `raw` (at least one
    /// positive per group).
    fn weighted_groups(sizes: &[usize], raw: &[u32]) -> (Vec<Vec<u16>>, Vec<Vec<u32>>) {
        let groups = port_groups(sizes);
        let weights = groups
            .iter()
            .enumerate()
            .map(|(g, ports)| {
                let mut w: Vec<u32> = (0..ports.len())
                    .map(|i| raw[(g * 6 + i) % raw.len()])
                    .collect();
                if w.iter().all(|&x| x == 0) {
                    w[0] = 1;
                }
                w
            })
            .collect();
        (groups, weights)
    }

    /// The plan of an unweighted route as it was before weights existed, from a copy of the state.
    fn reference_plan(groups: &[Vec<u16>], lb: LbPolicy, state: &mut LbState) -> Vec<u16> {
        let mut cursor = None;
        let mut out = Vec::new();
        for g in groups {
            let n = g.len();
            let start = match lb {
                LbPolicy::RoundRobin => *cursor.get_or_insert_with(|| state.next_cursor(0)) % n,
                LbPolicy::LeastConnections => {
                    let a = (state.random() % n as u64) as usize;
                    let _b = state.random();
                    a // every endpoint idle: the first draw is kept
                }
            };
            out.extend((0..n.min(MAX_ATTEMPTS_PER_GROUP)).map(|k| g[(start + k) % n]));
        }
        out
    }

    proptest! {
        /// Weighted plans, with any liveness: only the route's endpoints, never a down one, distinct
        /// within a group and capped per group, groups in priority order, every live endpoint counted.
        #[test]
        fn weighted_plans_are_well_formed(sizes in proptest::collection::vec(1usize..6, 1..4), raw in proptest::collection::vec(0u32..5, 1..20), states in proptest::collection::vec(0u8..4, 24), lb in prop_oneof![Just(LbPolicy::RoundRobin), Just(LbPolicy::LeastConnections)], seed in any::<u64>(), rounds in 1usize..6) {
            let (groups, weights) = weighted_groups(&sizes, &raw);
            let r = weighted_route(groups.clone(), weights, lb);
            let live = |p: u16| liveness(&states, p);
            let mut s = LbState::new(1, seed);
            for _ in 0..rounds {
                for got in [all(&r, &mut s), all_with(&r, &mut s, live)] {
                    prop_assert!(got.iter().all(|p| groups.iter().flatten().any(|q| q == p)));
                    let mut seen = got.clone();
                    seen.sort_unstable();
                    seen.dedup();
                    prop_assert_eq!(seen.len(), got.len());
                    let group_of: Vec<u16> = got.iter().map(|p| (p - 1) / 100).collect();
                    prop_assert!(group_of.windows(2).all(|w| w[0] <= w[1]));
                }
                let got = all_with(&r, &mut s, live);
                prop_assert!(got.iter().all(|&p| live(p) != Liveness::Down));
                let want: usize = groups.iter()
                    .map(|g| g.iter().filter(|&&p| live(p) != Liveness::Down).count().min(MAX_ATTEMPTS_PER_GROUP))
                    .sum();
                prop_assert_eq!(got.len(), want);
            }
        }

        /// Round robin: over any `W` consecutive connections of a core, each endpoint is first exactly
        /// its weight's times (`W` the sum of the weights), wherever the cursor starts.
        #[test]
        fn weighted_round_robin_is_exact_over_every_cycle(raw in proptest::collection::vec(0u32..12, 1..7), skip in 0usize..200, seed in any::<u64>()) {
            let (groups, weights) = weighted_groups(&[raw.len()], &raw);
            let w = &weights[0];
            let total: u32 = w.iter().sum();
            let r = weighted_route(groups.clone(), weights.clone(), LbPolicy::RoundRobin);
            let mut s = LbState::new(1, seed);
            firsts(&r, &mut s, skip);
            let got = firsts(&r, &mut s, total as usize);
            for (port, &weight) in groups[0].iter().zip(w) {
                prop_assert_eq!(count(&got, *port), weight as usize, "{:?} {:?}", w, got);
            }
        }

        /// Unweighted groups — no weights, or an empty list for each group — plan as before weights.
        #[test]
        fn unweighted_plans_are_unchanged(sizes in proptest::collection::vec(1usize..6, 1..4), lb in prop_oneof![Just(LbPolicy::RoundRobin), Just(LbPolicy::LeastConnections)], seed in any::<u64>(), rounds in 1usize..8, explicit in any::<bool>()) {
            let groups = port_groups(&sizes);
            let weights = if explicit { vec![vec![]; groups.len()] } else { vec![] };
            let r = weighted_route(groups.clone(), weights, lb);
            let mut s = LbState::new(1, seed);
            let mut reference = s.clone();
            for _ in 0..rounds {
                prop_assert_eq!(all(&r, &mut s), reference_plan(&groups, lb, &mut reference));
            }
        }
    }
}
