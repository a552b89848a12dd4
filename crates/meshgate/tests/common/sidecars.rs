//! What a sidecar test needs written: a service's leaf certificate from `meshgate ca`, and a sidecar
//! config reading its catalog from a directory.

use super::process::meshgate_ok;
use std::path::Path;

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

/// The web → api mesh in `dir/catalog`: web's sidecar on `web_public` with an upstream to api on
/// `upstream`, api's sidecar on `api_public` in front of the app on `app`, and an intention letting web in.
pub fn write_web_api_catalog(
    dir: &Path,
    web_public: u16,
    upstream: u16,
    app: u16,
    api_public: u16,
) {
    std::fs::create_dir_all(dir.join("catalog")).expect("mkdir");
    std::fs::write(
        dir.join("catalog/web.hcl"),
        format!("service {{\n  name = \"web\"\n  port = 1\n  connect {{ sidecar_service {{\n    address = \"127.0.0.1\"\n    port = {web_public}\n    proxy {{ upstreams = [{{ destination_name = \"api\", local_bind_port = {upstream} }}] }}\n  }} }}\n}}\n"),
    )
    .expect("web");
    std::fs::write(
        dir.join("catalog/api.hcl"),
        format!("service {{\n  name = \"api\"\n  port = {app}\n  connect {{ sidecar_service {{\n    address = \"127.0.0.1\"\n    port = {api_public}\n  }} }}\n}}\n"),
    )
    .expect("api");
    std::fs::write(
        dir.join("catalog/intentions.hcl"),
        "Kind = \"service-intentions\"\nName = \"api\"\nSources = [{ Name = \"web\", Action = \"allow\" }]\n",
    )
    .expect("intentions");
}
