//! What a sidecar test needs written: a service's leaf certificate from `meshgate ca`, and a sidecar
//! config reading its catalog from a directory.

use super::process::meshgate_ok;

/// `meshgate ca issue`: a leaf for `service` in `datacenter` from the authority in `ca`, into `out`.
pub fn issue_leaf(ca: &str, service: &str, datacenter: &str, out: &str) {
    meshgate_ok(&[
        "ca",
        "issue",
        "--ca",
        ca,
        "--service",
        service,
        "--datacenter",
        datacenter,
        "--out",
        out,
    ]);
}

/// A sidecar config as the sidecar tests write it: certificates in `certs/<service>/`, the file-catalog
/// reading `catalog` (relative to the config) every 100 ms; `extra` adds `[sidecar]` lines.
pub fn sidecar_toml(
    service: &str,
    datacenter: &str,
    admin: &str,
    catalog: &str,
    trust_domain: &str,
    default_intention: &str,
    extra: &str,
) -> String {
    format!(
        r#"[sidecar]
service = "{service}"
datacenter = "{datacenter}"
admin = "{admin}"
default_intention = "{default_intention}"
{extra}
[tls]
cert_file = "certs/{service}/cert.pem"
key_file = "certs/{service}/key.pem"
roots_file = "certs/{service}/roots.pem"

[catalog]
plugin = "file-catalog"
config = {{ dir = "{catalog}", datacenter = "{datacenter}", trust_domain = "{trust_domain}" }}
allow_dirs = ["{catalog}"]
poll_ms = 100
"#
    )
}
