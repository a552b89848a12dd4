//! `testbed-hook`: a connection hook that misbehaves when the SNI's first label asks it to — `loop` spins
//! forever, `trap` panics, `alloc` allocates without end, `block` waits in a host call (an HTTP GET to the
//! `block_url` setting, which the fault run points at a server that never answers) — and lets every other
//! name through to the route table. So one gateway serves honest and hostile clients side by side, and a
//! fault run measures what the honest ones see. Not shipped.

use meshgate_guest::host;
use meshgate_guest::types::Decision;

wit_bindgen::generate!({
    world: "connection-hook",
    path: "../wit",
    with: {
        "meshgate:plugin/types@0.6.0": meshgate_guest::types,
        "meshgate:plugin/host@0.6.0": meshgate_guest::host,
    },
});

struct TestbedHook;

impl Guest for TestbedHook {
    /// Takes any settings: the fault runs pass only `block_url`.
    fn configure(_settings: Vec<(String, String)>) -> Result<(), String> {
        Ok(())
    }
    fn decide(
        settings: Vec<(String, String)>,
        sni: Option<String>,
        _alpn: Vec<String>,
        _source: String,
    ) -> Verdict {
        let first = sni
            .as_deref()
            .and_then(|s| s.split('.').next())
            .unwrap_or("");
        match first {
            "loop" => loop {
                std::hint::spin_loop();
            },
            "trap" => panic!("testbed-hook asked to trap"),
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "block" => {
                let url = meshgate_guest::setting(&settings, "block_url").unwrap_or("");
                let _ = host::http_get(url);
            }
            _ => {}
        }
        // Never cached: every hostile connection makes the call again.
        Verdict {
            decision: Decision::UseTable,
            cacheable: false,
        }
    }
}

export!(TestbedHook);
