//! `sni-denylist`: a connection hook that refuses names on a list before the route table is consulted —
//! the "block this name now" switch an operator wants during an incident, without touching the catalog.
//!
//! Settings: `deny = "bad.example,*.quarantine.example"` (exact names, or `*.suffix` for any name under
//! the suffix); `deny_no_sni = "true"` also refuses clients that send no SNI. Every verdict depends on the
//! name only, so it is cacheable; `cache = "false"` makes the gateway ask on every connection (to measure
//! the cost of a hook call).

use meshgate_guest::sdk::{self, Config, SettingError};
use meshgate_guest::types::Decision;

wit_bindgen::generate!({
    world: "connection-hook",
    path: "../wit",
    with: {
        "meshgate:plugin/types@0.6.0": meshgate_guest::types,
        "meshgate:plugin/host@0.6.0": meshgate_guest::host,
    },
});

struct SniDenylist;

/// Every key this plugin reads.
const KNOWN: &[&str] = &["deny", "deny_no_sni", "cache"];

fn check(settings: &[(String, String)]) -> Result<(), SettingError> {
    let config = Config::new(settings);
    config.only(KNOWN)?;
    config.bool_or("deny_no_sni", false)?;
    config.bool_or("cache", true)?;
    Ok(())
}

fn listed(name: &str, entry: &str) -> bool {
    match entry.strip_prefix("*.") {
        Some(suffix) => {
            name.len() > suffix.len() + 1
                && name.ends_with(suffix)
                && name[..name.len() - suffix.len()].ends_with('.')
        }
        None => name == entry,
    }
}

impl Guest for SniDenylist {
    fn configure(settings: Vec<(String, String)>) -> Result<(), String> {
        sdk::init();
        check(&settings).map_err(String::from)
    }
    fn decide(
        settings: Vec<(String, String)>,
        sni: Option<String>,
        _alpn: Vec<String>,
        _source: String,
    ) -> Verdict {
        let deny = meshgate_guest::setting(&settings, "deny").unwrap_or("");
        let decision = match sni {
            None if Config::new(&settings).bool_or("deny_no_sni", false) == Ok(true) => {
                Decision::Deny
            }
            None => Decision::UseTable,
            Some(name) => {
                if deny
                    .split(',')
                    .map(str::trim)
                    .filter(|e| !e.is_empty())
                    .any(|e| listed(&name, e))
                {
                    Decision::Deny
                } else {
                    Decision::UseTable
                }
            }
        };
        Verdict {
            decision,
            // `configure` checked the value; a name's verdict never changes, so caching is the default.
            cacheable: Config::new(&settings)
                .bool_or("cache", true)
                .unwrap_or(true),
        }
    }
}

export!(SniDenylist);
