//! `testbed`: a router plugin that does what its `behaviour` setting says — answer, trap, loop forever,
//! allocate without bound, return an invalid table, or reach for a file, URL or environment variable —
//! so that the host's sandbox can be tested against real misbehaviour. Its `configure` misbehaves as its
//! `configure` setting says (`refuse`, `trap`, `loop`) and accepts anything else. Not shipped.

use meshgate_guest::host;

wit_bindgen::generate!({
    world: "router-plugin",
    path: "../wit",
    with: {
        "meshgate:plugin/types@0.6.0": meshgate_guest::types,
        "meshgate:plugin/host@0.6.0": meshgate_guest::host,
    },
});

struct Testbed;

impl Guest for Testbed {
    fn configure(settings: Vec<(String, String)>) -> Result<(), String> {
        meshgate_guest::sdk::init();
        match meshgate_guest::setting(&settings, "configure") {
            Some("refuse") => Err("testbed asked to refuse its settings".into()),
            Some("trap") => panic!("testbed asked to trap in configure"),
            Some("loop") => loop {
                std::hint::spin_loop();
            },
            _ => Ok(()),
        }
    }
    fn gateway_routes(
        settings: Vec<(String, String)>,
        catalog: Catalog,
        _local_datacenter: String,
    ) -> Result<Vec<Route>, String> {
        let get = |k: &str| {
            meshgate_guest::setting(&settings, k)
                .unwrap_or("")
                .to_owned()
        };
        match get("behaviour").as_str() {
            "ok" => Ok(vec![Route {
                pattern: get("pattern"),
                endpoints: vec![get("endpoint")],
                reason: format!("testbed ({} instances seen)", catalog.instances.len()),
                failover: Vec::new(),
                weights: Vec::new(),
            }]),
            "trap" => panic!("testbed asked to trap"),
            "loop" => loop {
                std::hint::spin_loop();
            },
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "garbage" => Ok(vec![Route {
                pattern: "a.*.b".into(),
                endpoints: vec!["not-an-address".into()],
                reason: "garbage".into(),
                failover: Vec::new(),
                weights: Vec::new(),
            }]),
            "read" => host::read_file(&get("path")).map(|_| Vec::new()),
            "http" => host::http_get(&get("url")).map(|_| Vec::new()),
            "env" => Err(format!("env={:?}", host::get_env(&get("key")))),
            other => Err(format!("unknown behaviour `{other}`")),
        }
    }

    fn sidecar_plan(
        _settings: Vec<(String, String)>,
        _catalog: Catalog,
        _local_datacenter: String,
        service: String,
        _proxy_id: Option<String>,
    ) -> Result<SidecarPlan, String> {
        Err(format!("testbed plans no sidecar (asked for {service})"))
    }
}

export!(Testbed);
