//! Micro-benchmark: route lookup with 10, 10k and 1M routes, exact and wildcard hits.
use meshgate_route::{RouteSpec, RouteTable, RouteTableBuilder};
use std::net::SocketAddr;
use std::sync::OnceLock;

fn main() {
    divan::main();
}

fn table(n: usize) -> &'static RouteTable {
    static TABLES: OnceLock<Vec<(usize, RouteTable)>> = OnceLock::new();
    let tables = TABLES.get_or_init(|| {
        [10, 10_000, 1_000_000]
            .into_iter()
            .map(|n| {
                let ep = vec![SocketAddr::from(([127, 0, 0, 1], 9000))];
                let mut b = RouteTableBuilder::new();
                for i in 0..n {
                    b.add(RouteSpec::new(
                        format!("svc{i}.default.dc1.internal.td.consul"),
                        ep.clone(),
                    ))
                    .expect("route");
                }
                for dc in 0..100 {
                    b.add(RouteSpec::new(
                        format!("*.dc{}.internal.td.consul", dc + 2),
                        ep.clone(),
                    ))
                    .expect("route");
                }
                (n, b.build())
            })
            .collect()
    });
    &tables.iter().find(|(k, _)| *k == n).expect("table size").1
}

#[divan::bench(args = [10, 10_000, 1_000_000])]
fn exact(n: usize) -> bool {
    table(n)
        .lookup(divan::black_box("svc7.default.dc1.internal.td.consul"))
        .route()
        .is_some()
}

#[divan::bench(args = [10, 10_000, 1_000_000])]
fn wildcard(n: usize) -> bool {
    table(n)
        .lookup(divan::black_box("api.default.dc57.internal.td.consul"))
        .route()
        .is_some()
}
