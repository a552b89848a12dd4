//! `{{name}}`: a meshgate connection hook (world `connection-hook`). The gateway calls `decide` for each
//! new connection, on the connection's own core, before its route table; the verdict routes it by the
//! table, closes it, or forwards it to endpoints of the hook's choosing. Before any of that, each new
//! instance gets `configure` with the settings: an error there refuses the config (the gateway does not
//! start, `meshgate check` fails, a reload is refused) instead of failing connections later.
//!
//! Settings (`[hook] config = { ... }` in the gateway's config):
//! - `deny = "bad.example, *.quarantine.example"`: close connections for these names;
//! - `deny_no_sni = true`: also close connections that name nothing.

mod sdk;

wit_bindgen::generate!({ world: "connection-hook", path: "wit" });

// `Verdict` comes from the world (generate! defines it at the crate root); other types from their
// interface.
use meshgate::plugin::types::Decision;
use sdk::{Config, SettingError};

/// Every key this plugin reads.
const KNOWN: &[&str] = &["deny", "deny_no_sni"];

/// The decision for one name: a pure function, so `cargo test` checks it without a gateway.
pub fn decision(settings: &Config<'_>, sni: Option<&str>) -> Result<Decision, SettingError> {
    settings.only(KNOWN)?;
    let deny = settings.list("deny");
    Ok(match sni {
        None if settings.bool_or("deny_no_sni", false)? => Decision::Deny,
        None => Decision::UseTable,
        Some(name) if deny.iter().any(|p| sdk::matches(name, p)) => Decision::Deny,
        Some(_) => Decision::UseTable,
    })
}

struct Plugin;

impl Guest for Plugin {
    fn configure(settings: Vec<(String, String)>) -> Result<(), String> {
        sdk::init();
        // Checks every key and value once, now, with the same code `decide` runs.
        decision(&Config::new(&settings), None)?;
        Ok(())
    }
    fn decide(
        settings: Vec<(String, String)>,
        sni: Option<String>,
        _alpn: Vec<String>,
        _source: String,
    ) -> Verdict {
        sdk::init();
        match decision(&Config::new(&settings), sni.as_deref()) {
            // The verdict depends on the name only: the gateway may cache it per core.
            Ok(decision) => Verdict {
                decision,
                cacheable: true,
            },
            // A bad setting: say which, and fail closed.
            Err(e) => {
                log_warn!("{e}");
                Verdict {
                    decision: Decision::Deny,
                    cacheable: false,
                }
            }
        }
    }
}

export!(Plugin);

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn denies_listed_names_only() {
        let raw = kv(&[("deny", "bad.example, *.quarantine.example")]);
        let s = Config::new(&raw);
        assert!(matches!(decision(&s, Some("bad.example")), Ok(Decision::Deny)));
        assert!(matches!(decision(&s, Some("x.quarantine.example")), Ok(Decision::Deny)));
        assert!(matches!(decision(&s, Some("good.example")), Ok(Decision::UseTable)));
        assert!(matches!(decision(&s, None), Ok(Decision::UseTable)));
    }

    #[test]
    fn a_misspelt_key_is_an_error() {
        let raw = kv(&[("denny", "bad.example")]);
        assert_eq!(decision(&Config::new(&raw), None).unwrap_err().key, "denny");
    }
}
