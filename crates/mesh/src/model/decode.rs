//! Decoding one file's value tree into a [`Document`]: registrations (with the inline sidecar completed
//! by Consul's defaults) or a config entry, refused whole at the first invalid field.

use super::keys::{as_object, fail, join, norm, Obj, R};
use super::{
    Check, ConfigEntry, DecodeError, Document, EntryKind, Failover, Health, HostPort,
    IntentionAction, IntentionSource, Proxy, Redirect, Service, ServiceKind, Subset, Upstream,
};
use serde_json::Value;
use std::collections::BTreeMap;

fn decode_upstream(o: Obj<'_>) -> R<Upstream> {
    let Some(name) = o.string("destination_name")? else {
        return fail(o.path, "missing destination_name", None);
    };
    let Some(port) = o.port("local_bind_port")? else {
        return fail(o.path, "missing local_bind_port", None);
    };
    Ok(Upstream {
        destination_type: o
            .string("destination_type")?
            .unwrap_or_else(|| "service".to_owned()),
        destination_name: name,
        destination_namespace: o.string("destination_namespace")?,
        datacenter: o.string("datacenter")?.filter(|d| !d.is_empty()),
        local_bind_address: o.string("local_bind_address")?,
        local_bind_port: port,
        mesh_gateway: o.mode("mesh_gateway")?,
    })
}

fn decode_proxy(o: Obj<'_>) -> R<Proxy> {
    Ok(Proxy {
        destination_service_name: o.string("destination_service_name")?.unwrap_or_default(),
        destination_service_id: o.string("destination_service_id")?,
        local_service_address: o.string("local_service_address")?,
        local_service_port: o.port("local_service_port")?,
        mesh_gateway: o.mode("mesh_gateway")?,
        upstreams: o.objects("upstreams", decode_upstream)?,
    })
}

fn decode_check(o: Obj<'_>) -> R<Check> {
    let status = match o
        .string("status")?
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("passing") => Health::Passing,
        Some("warning") => Health::Warning,
        Some("critical") => Health::Critical,
        Some("maintenance") => Health::Maintenance,
        Some(other) => {
            return fail(
                &join(o.path, "status"),
                format!("unknown check status `{other}` (expected passing, warning or critical)"),
                None,
            )
        }
    };
    let name = o
        .string("id")?
        .or(o.string("check_id")?)
        .or(o.string("name")?)
        .unwrap_or_default();
    Ok(Check { name, status })
}

fn decode_tagged(o: Obj<'_>) -> R<BTreeMap<String, HostPort>> {
    let mut out = BTreeMap::new();
    for (k, v) in o.map {
        let path = join(o.path, k);
        let Some(map) = as_object(v) else {
            return fail(&path, "expected a block with address and port", Some(v));
        };
        let inner = Obj { map, path: &path };
        out.insert(
            k.to_ascii_lowercase(),
            HostPort {
                address: inner.string("address")?.unwrap_or_default(),
                port: inner.port("port")?.unwrap_or(0),
            },
        );
    }
    Ok(out)
}

fn decode_service(o: Obj<'_>) -> R<Service> {
    let Some(name) = o.string("name")? else {
        return fail(o.path, "missing name", None);
    };
    let written = o.string("kind")?.unwrap_or_default();
    let kind = if written.is_empty() {
        ServiceKind::Typical
    } else {
        match ServiceKind::ALL.into_iter().find(|v| v.label() == written) {
            Some(k) => k,
            None => {
                return fail(
                    &join(o.path, "kind"),
                    format!(
                    "unsupported kind `{written}` (expected connect-proxy, mesh-gateway or none)"
                ),
                    None,
                )
            }
        }
    };
    let mut checks = o.objects("check", decode_check)?;
    checks.extend(o.objects("checks", decode_check)?);
    let proxy = o.object("proxy", decode_proxy)?;
    if kind == ServiceKind::ConnectProxy
        && proxy
            .as_ref()
            .is_none_or(|p| p.destination_service_name.is_empty())
    {
        return fail(
            o.path,
            "a connect-proxy needs proxy.destination_service_name",
            None,
        );
    }
    let mut service = Service {
        id: o.string("id")?.unwrap_or_else(|| name.clone()),
        name,
        kind,
        namespace: o
            .string("namespace")?
            .unwrap_or_else(|| crate::names::DEFAULT.to_owned()),
        address: o.string("address")?.unwrap_or_default(),
        port: o.port("port")?.unwrap_or(0),
        tags: o.strings("tags")?,
        meta: o.string_map("meta")?,
        tagged_addresses: o
            .object("tagged_addresses", decode_tagged)?
            .unwrap_or_default(),
        proxy,
        sidecar: None,
        connect_native: false,
        checks,
    };
    let connect = o.object("connect", |c| {
        let native = c.boolean("native")?;
        let sidecar = c.object("sidecar_service", |s| decode_sidecar(s, &service))?;
        Ok((native, sidecar))
    })?;
    if let Some((native, sidecar)) = connect {
        service.connect_native = native;
        service.sidecar = sidecar.map(Box::new);
    }
    Ok(service)
}

/// The inline sidecar: Consul fills in name, id, kind, destination and port defaults from the parent.
fn decode_sidecar(o: Obj<'_>, parent: &Service) -> R<Service> {
    let mut map = o.map.clone();
    if (Obj {
        map: &map,
        path: "",
    })
    .get("name")
    .is_none()
    {
        map.insert(
            "name".into(),
            Value::String(format!("{}-sidecar-proxy", parent.name)),
        );
    }
    let view = Obj {
        map: &map,
        path: o.path,
    };
    let mut proxy = view.object("proxy", decode_proxy)?.unwrap_or_default();
    if proxy.destination_service_name.is_empty() {
        proxy.destination_service_name = parent.name.clone();
    }
    if proxy.destination_service_id.is_none() {
        proxy.destination_service_id = Some(parent.id.clone());
    }
    if proxy.local_service_port.is_none() && parent.port != 0 {
        proxy.local_service_port = Some(parent.port);
    }
    let mut checks = view.objects("check", decode_check)?;
    checks.extend(view.objects("checks", decode_check)?);
    let name = view.string("name")?.unwrap_or_default();
    Ok(Service {
        id: view
            .string("id")?
            .unwrap_or_else(|| format!("{}-sidecar-proxy", parent.id)),
        name,
        kind: ServiceKind::ConnectProxy,
        namespace: parent.namespace.clone(),
        address: view.string("address")?.unwrap_or_default(),
        // Consul assigns a port from its sidecar range when none is given; 21000 is the range's start.
        port: view.port("port")?.unwrap_or(21000),
        // Consul: a sidecar inherits its parent's tags and meta unless it sets its own.
        tags: match view.get("tags") {
            Some(_) => view.strings("tags")?,
            None => parent.tags.clone(),
        },
        meta: match view.get("meta") {
            Some(_) => view.string_map("meta")?,
            None => parent.meta.clone(),
        },
        tagged_addresses: BTreeMap::new(),
        proxy: Some(proxy),
        sidecar: None,
        connect_native: false,
        checks,
    })
}

fn decode_entry(o: Obj<'_>, kind: EntryKind) -> R<ConfigEntry> {
    let Some(name) = o.string("name")? else {
        return fail(o.path, "missing Name", None);
    };
    if kind == EntryKind::ProxyDefaults && name != "global" {
        return fail(
            &join(o.path, "Name"),
            "proxy-defaults must be named \"global\"",
            Some(&Value::String(name)),
        );
    }
    let mut other = BTreeMap::new();
    for (k, v) in o.map {
        if !matches!(
            norm(k).as_str(),
            "kind"
                | "name"
                | "meshgateway"
                | "subsets"
                | "defaultsubset"
                | "sources"
                | "failover"
                | "redirect"
        ) {
            other.insert(k.clone(), v.clone());
        }
    }
    let subsets = o
        .object("subsets", |s| {
            let mut out = Vec::new();
            for (name, v) in s.map {
                let path = join(s.path, name);
                let Some(map) = as_object(v) else {
                    return fail(&path, "expected a block with Filter", Some(v));
                };
                let inner = Obj { map, path: &path };
                let filter = inner.string("filter")?.unwrap_or_default();
                let parsed = crate::filter::Filter::parse(&filter).or_else(|m| {
                    fail(
                        &join(&path, "Filter"),
                        m,
                        Some(&Value::String(filter.clone())),
                    )
                })?;
                out.push(Subset {
                    name: name.clone(),
                    filter,
                    parsed,
                });
            }
            Ok(out)
        })?
        .unwrap_or_default();
    let sources = o.objects("sources", decode_intention_source)?;
    if kind != EntryKind::ServiceIntentions && !sources.is_empty() {
        return fail(
            &join(o.path, "Sources"),
            "only service-intentions entries have Sources",
            None,
        );
    }
    let default_subset = o.string("default_subset")?.filter(|s| !s.is_empty());
    let failover = o
        .object("failover", |f| {
            let mut out = Vec::new();
            for (key, v) in f.map {
                let path = join(f.path, key);
                let Some(map) = as_object(v) else {
                    return fail(
                        &path,
                        "expected a block with Service, ServiceSubset, Namespace or Datacenters",
                        Some(v),
                    );
                };
                out.push(decode_failover(key, Obj { map, path: &path })?);
            }
            Ok(out)
        })?
        .unwrap_or_default();
    let redirect = o.object("redirect", decode_redirect)?;
    for (field, set) in [
        ("Failover", !failover.is_empty()),
        ("Redirect", redirect.is_some()),
    ] {
        if set && kind != EntryKind::ServiceResolver {
            return fail(
                &join(o.path, field),
                format!("only service-resolver entries have {field}"),
                None,
            );
        }
    }
    // Consul refuses these combinations: a redirected service resolves by the other resolver, so its
    // own subsets and failover would never apply.
    if redirect.is_some() && (!failover.is_empty() || !subsets.is_empty()) {
        let other = if failover.is_empty() {
            "Subsets"
        } else {
            "Failover"
        };
        return fail(
            &join(o.path, "Redirect"),
            format!("Redirect and {other} cannot both be set"),
            None,
        );
    }
    for f in &failover {
        if f.key != "*" && !subsets.iter().any(|s| s.name == f.key) {
            return fail(
                &join(&join(o.path, "Failover"), &f.key),
                format!("`{}` is neither `*` nor a subset of this resolver", f.key),
                None,
            );
        }
    }
    Ok(ConfigEntry {
        kind,
        name,
        mesh_gateway: o.mode("mesh_gateway")?,
        subsets,
        default_subset,
        sources,
        failover,
        redirect,
        other,
    })
}

/// Refuses keys outside `known`: a misspelt `Datacenter` in a failover would otherwise silently mean
/// "no failover".
fn only_keys(o: Obj<'_>, known: &[&str], what: &str) -> R<()> {
    for (k, v) in o.map {
        if !known.iter().any(|n| norm(n) == norm(k)) {
            return fail(
                &join(o.path, k),
                format!("unknown key in {what} (expected {})", known.join(", ")),
                Some(v),
            );
        }
    }
    Ok(())
}

/// A non-empty string, or `None` when absent or empty (Consul treats `""` as unset).
fn non_empty(o: Obj<'_>, key: &str) -> R<Option<String>> {
    Ok(o.string(key)?.filter(|s| !s.is_empty()))
}

fn decode_failover(key: &str, o: Obj<'_>) -> R<Failover> {
    only_keys(
        o,
        &["Service", "ServiceSubset", "Namespace", "Datacenters"],
        "a Failover",
    )?;
    let datacenters = o.strings("datacenters")?;
    if let Some(i) = datacenters.iter().position(String::is_empty) {
        return fail(
            &format!("{}[{i}]", join(o.path, "Datacenters")),
            "empty datacenter name",
            None,
        );
    }
    let f = Failover {
        key: key.to_owned(),
        service: non_empty(o, "service")?,
        service_subset: non_empty(o, "service_subset")?,
        namespace: non_empty(o, "namespace")?,
        datacenters,
    };
    if f.service.is_none()
        && f.service_subset.is_none()
        && f.namespace.is_none()
        && f.datacenters.is_empty()
    {
        return fail(
            o.path,
            "a Failover needs at least one of Service, ServiceSubset, Namespace or Datacenters",
            None,
        );
    }
    Ok(f)
}

fn decode_redirect(o: Obj<'_>) -> R<Redirect> {
    only_keys(
        o,
        &["Service", "ServiceSubset", "Namespace", "Datacenter"],
        "a Redirect",
    )?;
    let r = Redirect {
        service: non_empty(o, "service")?,
        service_subset: non_empty(o, "service_subset")?,
        namespace: non_empty(o, "namespace")?,
        datacenter: non_empty(o, "datacenter")?,
    };
    if r == Redirect::default() {
        return fail(
            o.path,
            "a Redirect needs at least one of Service, ServiceSubset, Namespace or Datacenter",
            None,
        );
    }
    Ok(r)
}

fn decode_intention_source(o: Obj<'_>) -> R<IntentionSource> {
    let Some(name) = o.string("name")? else {
        return fail(o.path, "missing Name (a service name or \"*\")", None);
    };
    if o.get("permissions").is_some() {
        // L7 permissions need HTTP parsing; a sidecar that ignored them would allow too much.
        return fail(
            &join(o.path, "Permissions"),
            "L7 permissions are not supported; use Action (allow or deny) by source identity",
            None,
        );
    }
    // These name callers outside this datacenter's default partition (a peer cluster, an admin
    // partition, a sameness group). Dropping them would turn "allow web from peer X" into "allow the
    // local web": refuse rather than widen.
    for (key, scope) in [
        ("peer", "a cluster peer"),
        ("partition", "an admin partition"),
        ("samenessgroup", "a sameness group"),
    ] {
        if let Some((k, v)) = o.get(key) {
            return fail(
                &join(o.path, k),
                format!(
                    "sources in {scope} are not supported; without it this rule would apply to the \
                     local service of that name"
                ),
                Some(v),
            );
        }
    }
    let action = match o.get("action") {
        Some((_, Value::String(a))) if a.eq_ignore_ascii_case("allow") => IntentionAction::Allow,
        Some((_, Value::String(a))) if a.eq_ignore_ascii_case("deny") => IntentionAction::Deny,
        Some((k, v)) => return fail(&join(o.path, k), "expected \"allow\" or \"deny\"", Some(v)),
        None => return fail(o.path, "missing Action (\"allow\" or \"deny\")", None),
    };
    Ok(IntentionSource {
        name,
        namespace: o
            .string("namespace")?
            .unwrap_or_else(|| crate::names::DEFAULT.to_owned()),
        action,
    })
}

/// Decodes one file's value tree.
pub fn decode(v: &Value) -> Result<Document, DecodeError> {
    let Some(map) = v.as_object() else {
        return fail("", "expected an object at the top of the file", None);
    };
    let top = Obj { map, path: "" };
    let datacenter = top.string("datacenter")?;
    let node_address = top.string("node_address")?;
    if let Some(kind) = top.string("kind")? {
        if let Some(k) = EntryKind::ALL.into_iter().find(|k| k.label() == kind) {
            return Ok(Document::ConfigEntry(decode_entry(top, k)?));
        }
    }
    let mut services = top.objects("service", decode_service)?;
    services.extend(top.objects("services", decode_service)?);
    if services.is_empty() && top.get("name").is_some() {
        // The agent API's flat form: the file is the service itself.
        services.push(decode_service(top)?);
    }
    if services.is_empty() {
        return fail(
            "",
            "expected a `service` block, a `services` list, or a config entry (Kind = proxy-defaults / service-defaults)",
            None,
        );
    }
    Ok(Document::Services {
        services,
        datacenter,
        node_address,
    })
}
