//! Plugin costs: one host→plugin call, and compiling a gateway's routes for 10k services across 100
//! datacenters natively and through the consul-router plugin (catalog lowered into the sandbox and
//! routes lifted back).

use meshgate_mesh::catalog::{Catalog as MeshCatalog, Instance};
use meshgate_mesh::model::{HostPort, Proxy, Service, ServiceKind};
use meshgate_plugin::types::{self, Catalog};
use meshgate_plugin::{PluginHost, RouterPlugin, Sandbox};
use std::sync::{Mutex, OnceLock};

const TD: &str = "11111111-2222-3333-4444-555555555555.consul";

fn main() {
    divan::main();
}

fn host() -> &'static PluginHost {
    static HOST: OnceLock<PluginHost> = OnceLock::new();
    HOST.get_or_init(|| PluginHost::new().expect("host"))
}

/// 100 services (each with a sidecar) in each of 100 datacenters, plus one gateway per datacenter.
fn catalogs() -> &'static (MeshCatalog, Catalog) {
    static C: OnceLock<(MeshCatalog, Catalog)> = OnceLock::new();
    C.get_or_init(|| {
        let mut mesh = MeshCatalog {
            trust_domain: TD.into(),
            ..Default::default()
        };
        let mut wit = Catalog {
            trust_domain: TD.into(),
            instances: vec![],
            config_entries: vec![],
        };
        for dc in 1..=100u16 {
            let dcname = format!("dc{dc}");
            for svc in 0..100u16 {
                let name = format!("svc{svc}");
                let service = Service {
                    id: format!("{name}-sidecar-proxy"),
                    name: format!("{name}-sidecar-proxy"),
                    kind: ServiceKind::ConnectProxy,
                    namespace: "default".into(),
                    address: format!("10.{}.{}.{}", dc % 250, svc / 250, svc % 250),
                    port: 21000,
                    tags: vec![],
                    meta: Default::default(),
                    tagged_addresses: Default::default(),
                    proxy: Some(Proxy {
                        destination_service_name: name.clone(),
                        ..Default::default()
                    }),
                    sidecar: None,
                    connect_native: false,
                    checks: vec![],
                };
                wit.instances.push(types::Instance {
                    datacenter: dcname.clone(),
                    node_address: "10.0.0.1".into(),
                    id: service.id.clone(),
                    name: service.name.clone(),
                    kind: types::ServiceKind::ConnectProxy,
                    namespace: "default".into(),
                    address: service.address.clone(),
                    port: 21000,
                    tags: vec![],
                    meta: vec![],
                    lan: None,
                    wan: None,
                    proxy: Some(types::Proxy {
                        destination_service_name: name,
                        local_service_address: None,
                        local_service_port: None,
                        mesh_gateway: None,
                        upstreams: vec![],
                    }),
                    connect_native: false,
                    health: types::Health::Passing,
                });
                mesh.instances.push(Instance {
                    datacenter: dcname.clone(),
                    node_address: "10.0.0.1".into(),
                    service,
                });
            }
            let wan = HostPort {
                address: format!("198.51.{}.1", dc % 250),
                port: 443,
            };
            let mut tagged = std::collections::BTreeMap::new();
            tagged.insert("wan".to_owned(), wan.clone());
            mesh.instances.push(Instance {
                datacenter: dcname.clone(),
                node_address: "10.0.0.2".into(),
                service: Service {
                    id: "mesh-gateway".into(),
                    name: "mesh-gateway".into(),
                    kind: ServiceKind::MeshGateway,
                    namespace: "default".into(),
                    address: String::new(),
                    port: 8443,
                    tags: vec![],
                    meta: Default::default(),
                    tagged_addresses: tagged,
                    proxy: None,
                    sidecar: None,
                    connect_native: false,
                    checks: vec![],
                },
            });
            wit.instances.push(types::Instance {
                datacenter: dcname,
                node_address: "10.0.0.2".into(),
                id: "mesh-gateway".into(),
                name: "mesh-gateway".into(),
                kind: types::ServiceKind::MeshGateway,
                namespace: "default".into(),
                address: String::new(),
                port: 8443,
                tags: vec![],
                meta: vec![],
                lan: None,
                wan: Some(types::HostPort {
                    address: wan.address,
                    port: wan.port,
                }),
                proxy: None,
                connect_native: false,
                health: types::Health::Passing,
            });
        }
        (mesh, wit)
    })
}

fn router(name: &str) -> &'static Mutex<RouterPlugin> {
    static ROUTERS: OnceLock<Vec<(String, Mutex<RouterPlugin>)>> = OnceLock::new();
    let routers = ROUTERS.get_or_init(|| {
        let testbed = host().compile(meshgate_plugin::TESTBED).expect("testbed");
        vec![
            (
                "testbed".to_owned(),
                Mutex::new(
                    host()
                        .router_from("testbed".into(), testbed, Sandbox::default())
                        .expect("testbed"),
                ),
            ),
            (
                "consul-router".to_owned(),
                Mutex::new(
                    host()
                        .router("consul-router", Sandbox::default())
                        .expect("consul-router"),
                ),
            ),
        ]
    });
    &routers.iter().find(|(n, _)| n == name).expect("router").1
}

/// One call into a plugin and back (empty catalog, one route returned).
#[divan::bench]
fn host_to_plugin_call() -> usize {
    let settings: Vec<(String, String)> = [
        ("behaviour", "ok"),
        ("pattern", "a.example"),
        ("endpoint", "127.0.0.1:1"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let empty = Catalog {
        trust_domain: TD.into(),
        instances: vec![],
        config_entries: vec![],
    };
    let mut r = router("testbed").lock().expect("lock");
    r.gateway_routes(&settings, &empty, "dc1")
        .expect("call")
        .len()
}

/// Consul's routes for dc1 from 10k services in 100 datacenters, natively.
#[divan::bench(sample_count = 20)]
fn compile_routes_native_10k_services_100_dcs() -> usize {
    catalogs()
        .0
        .gateway_routes(divan::black_box("dc1"), false)
        .len()
}

/// The same through the consul-router plugin.
#[divan::bench(sample_count = 20)]
fn compile_routes_plugin_10k_services_100_dcs() -> usize {
    let mut r = router("consul-router").lock().expect("lock");
    let routes = r.gateway_routes(&[], &catalogs().1, "dc1").expect("routes");
    assert_eq!(routes.len(), 100 + 99);
    routes.len()
}
