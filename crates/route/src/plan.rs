//! Which endpoints a connection tries, in which order: load balancing within a priority group, failover
//! to the next group. Computed one attempt at a time from per-core state, so a connection allocates
//! nothing and the state is never shared between cores.

use crate::{LbPolicy, Route, RouteId};
use std::net::SocketAddr;

/// Attempts within one priority group before moving to the next (each attempt a different endpoint).
/// Retrying is safe because nothing has been forwarded upstream before a connect succeeds.
pub const MAX_ATTEMPTS_PER_GROUP: usize = 3;

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
        loop {
            let group = route.groups.get(self.group)?;
            let n = group.endpoints.len();
            if self.attempt >= n.min(MAX_ATTEMPTS_PER_GROUP) {
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
            let pick = group.endpoints[(self.start + self.attempt) % n];
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
