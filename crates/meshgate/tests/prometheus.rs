//! A real Prometheus (Debian's `prometheus` package) scraping a gateway and two sidecars under traffic:
//! its HTTP API must report the routed connections per destination and the bytes per direction that
//! the test itself sent, and the sidecars' calls; `promtool check metrics` must accept every
//! exposition. Also: the shipped rules pass `promtool check rules` and their unit tests
//! (`promtool test rules`), the shipped scrape config passes `promtool check config`, the Grafana
//! dashboard queries only metrics meshgate exports, and docs/operations.md lists exactly the metrics
//! the code defines.
//!
//! `prometheus` and `promtool` come from `cargo xtask install` (apt); without them these tests fail
//! saying so, unless `MESHGATE_SKIP_PROMETHEUS=1`.

mod common;

use common::{
    free_port, http_get, issue_leaf, line_app, meshgate_ok, poll_until, sidecar_toml, wait_for,
    write_web_api_catalog, Gateway, Proc, TempDir, TD,
};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long Prometheus gets to show what the test sent: it scrapes every second, and the gateway
/// publishes per-destination counts about once a second.
const SCRAPE_WAIT: Duration = Duration::from_secs(30);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Whether to run, failing plainly when a tool is missing.
fn tools() -> bool {
    if std::env::var_os("MESHGATE_SKIP_PROMETHEUS").is_some() {
        eprintln!("MESHGATE_SKIP_PROMETHEUS set: skipping the Prometheus tests");
        return false;
    }
    for tool in ["prometheus", "promtool"] {
        assert!(
            Command::new(tool).arg("--version").output().is_ok(),
            "`{tool}` not found: apt-get install prometheus (cargo xtask install does), or set MESHGATE_SKIP_PROMETHEUS=1"
        );
    }
    true
}

/// `promtool ARGS` must succeed; its output.
fn promtool(args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(repo())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("stdin");
    }
    drop(input);
    let out = child.wait_with_output().expect("promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn shipped_rules_scrape_config_and_rule_unit_tests_pass_promtool() {
    if !tools() {
        return;
    }
    promtool(
        &["check", "rules", "configs/prometheus/rules/meshgate.yml"],
        None,
    );
    promtool(
        &["check", "config", "configs/prometheus/prometheus.yml"],
        None,
    );
    let out = promtool(
        &[
            "test",
            "rules",
            "configs/prometheus/tests/meshgate.test.yml",
        ],
        None,
    );
    assert!(out.contains("SUCCESS"), "{out}");
    // Every alert has a runbook section in docs/operations.md, and each rule is unit-tested.
    let rules = std::fs::read_to_string(repo().join("configs/prometheus/rules/meshgate.yml"))
        .expect("rules");
    let tests = std::fs::read_to_string(repo().join("configs/prometheus/tests/meshgate.test.yml"))
        .expect("rule tests");
    let ops = operations_doc();
    for alert in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            ops.contains(&format!("### {alert}\n")),
            "docs/operations.md has no runbook section `### {alert}`"
        );
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "configs/prometheus/tests/meshgate.test.yml does not test {alert}"
        );
    }
}

/// A plain TCP upstream that counts what it receives until EOF, then sends `down` bytes and closes;
/// each connection's received count goes to the channel.
fn counting_upstream(down: usize) -> (SocketAddr, mpsc::Receiver<u64>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for mut s in listener.incoming().map_while(Result::ok) {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let mut buf = vec![0u8; 64 * 1024];
                let mut got = 0u64;
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    got += n as u64;
                }
                let _ = s.write_all(&vec![b'd'; down]);
                let _ = s.shutdown(Shutdown::Write);
                let _ = tx.send(got);
            });
        }
    });
    (addr, rx)
}

/// One connection through the gateway: a ClientHello for `sni`, `up` more bytes, a half-close; then
/// everything the upstream sends. Returns (bytes sent, bytes received).
fn one_connection(gw: SocketAddr, hello: &[u8], up: usize) -> (u64, u64) {
    let mut s = TcpStream::connect(gw).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(hello).expect("hello");
    s.write_all(&vec![b'u'; up]).expect("payload");
    s.shutdown(Shutdown::Write).expect("half-close");
    let mut got = Vec::new();
    s.read_to_end(&mut got).expect("read");
    ((hello.len() + up) as u64, got.len() as u64)
}

/// A Prometheus server scraping `jobs` (name, targets) every second; killed on drop.
struct Prometheus {
    proc: Proc,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Prometheus {
    fn start(jobs: &[(&str, Vec<SocketAddr>)]) -> Prometheus {
        let dir = TempDir::new("prometheus");
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
        );
        for (job, targets) in jobs {
            let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n",
                list.join(", ")
            ));
        }
        let file = dir.0.join("prometheus.yml");
        std::fs::write(&file, config).expect("config");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let proc = Proc::start_in(
            "prometheus",
            None,
            &[
                "prometheus",
                &format!("--config.file={}", file.display()),
                &format!("--storage.tsdb.path={}", dir.0.join("data").display()),
                &format!("--web.listen-address={addr}"),
                "--log.level=warn",
            ],
        );
        let p = Prometheus {
            proc,
            addr,
            _dir: dir,
        };
        let ready = poll_until(SCRAPE_WAIT, || {
            http_get(p.addr, "/-/ready").filter(|b| b.contains("Ready"))
        });
        assert!(ready.is_some(), "prometheus never ready:\n{}", p.proc.log());
        p
    }

    /// An instant query: each result's labels and value.
    fn query(&self, promql: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let mut encoded = String::new();
        for b in promql.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                encoded.push(b as char);
            } else {
                encoded.push_str(&format!("%{b:02X}"));
            }
        }
        let Some(body) = http_get(self.addr, &format!("/api/v1/query?query={encoded}")) else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                    .collect();
                let value = r["value"][1]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(f64::NAN);
                (labels, value)
            })
            .collect()
    }

    /// Waits until `promql`, summed by `by`, equals `want`; returns the last answer on failure.
    fn wait_equal(&self, promql: &str, by: &str, want: &BTreeMap<String, f64>) {
        let mut last = BTreeMap::new();
        let got = poll_until(SCRAPE_WAIT, || {
            last = self
                .query(promql)
                .into_iter()
                .map(|(l, v)| (l.get(by).cloned().unwrap_or_default(), v))
                .collect();
            (last == *want).then_some(())
        });
        assert!(
            got.is_some(),
            "Prometheus: {promql}\n  want {want:?}\n  got  {last:?}"
        );
    }
}

/// Metric family names in a Prometheus text exposition.
fn families(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

fn operations_doc() -> String {
    std::fs::read_to_string(repo().join("docs/operations.md")).expect("docs/operations.md")
}

/// Metric names in `text` (PromQL or Markdown): `meshgate_...` words, histogram series folded into
/// their family.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("meshgate_") {
        let start = i + at;
        let before_ok =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end] == b'_'
                || bytes[end].is_ascii_digit())
        {
            end += 1;
        }
        if before_ok {
            let name = &text[start..end];
            let name = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|n| n.ends_with("_seconds") || n.ends_with("_bytes"))
                })
                .unwrap_or(name);
            out.insert(name.trim_end_matches('_').to_owned());
        }
        i = end.max(start + 1);
    }
    out
}

/// The metric names the code defines: string literals naming a family in the library crates' sources
/// (`"meshgate_..."` passed to a family builder or a prometheus constructor).
fn code_metrics() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut pending = vec![repo().join("crates")];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)
            .expect("read dir")
            .map_while(Result::ok)
        {
            let path = entry.path();
            let name = entry.file_name();
            if path.is_dir() {
                // Tests and the binary's demo quote metrics; they define none.
                if name != "tests" && name != "fuzz" && name != "meshgate" {
                    pending.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("source");
                // Definitions only: code before the unit tests.
                let code = text.split("#[cfg(test)]").next().unwrap_or("");
                for part in code.split('"').skip(1).step_by(2) {
                    if part.starts_with("meshgate_")
                        && part.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                    {
                        out.insert(part.to_owned());
                    }
                }
            }
        }
    }
    // Built with a format string (the admin crate's readiness gauge).
    out.insert("meshgate_ready".to_owned());
    out
}

#[test]
fn operations_doc_lists_exactly_the_metrics_the_code_defines() {
    let ops = operations_doc();
    let table = ops
        .split("## Metrics")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("docs/operations.md has a `## Metrics` section");
    let documented: BTreeSet<String> = table
        .lines()
        .filter(|l| l.starts_with("| `meshgate_"))
        .flat_map(metric_names)
        .filter(|n| table.contains(&format!("| `{n}`")))
        .collect();
    let defined = code_metrics();
    let missing: Vec<_> = defined.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&defined).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "docs/operations.md ## Metrics: undocumented {missing:?}; documented but not in the code {stale:?}"
    );
}

#[test]
fn dashboard_and_rules_query_only_metrics_meshgate_exports() {
    let defined = code_metrics();
    for file in [
        "configs/grafana/meshgate.json",
        "configs/prometheus/rules/meshgate.yml",
    ] {
        let text = std::fs::read_to_string(repo().join(file)).expect(file);
        let mut exprs = String::new();
        if file.ends_with(".json") {
            let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
            for panel in dash["panels"].as_array().expect("panels") {
                let targets = panel["targets"].as_array().expect("targets");
                assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
                for t in targets {
                    let expr = t["expr"].as_str().expect("expr");
                    assert!(
                        !metric_names(expr).is_empty() || expr.starts_with("up{"),
                        "panel {}: `{expr}` names no meshgate metric",
                        panel["title"]
                    );
                    exprs.push_str(expr);
                    exprs.push('\n');
                }
            }
        } else {
            exprs = text;
        }
        let unknown: Vec<_> = metric_names(&exprs)
            .into_iter()
            .filter(|n| !defined.contains(n))
            .collect();
        assert!(
            unknown.is_empty(),
            "{file} queries metrics meshgate does not export: {unknown:?}"
        );
    }
}

#[test]
fn prometheus_scrapes_a_gateway_and_sidecars_under_traffic() {
    if !tools() {
        return;
    }
    // The gateway: two Consul destinations, each a counting upstream.
    const DOWN: usize = 3000;
    const UP: usize = 5000;
    let (api_up, api_rx) = counting_upstream(DOWN);
    let (web_up, web_rx) = counting_upstream(DOWN);
    let api = format!("api.default.dc1.internal.{TD}");
    let web = format!("web.default.dc2.internal.{TD}");
    let gw = Gateway::start(
        "",
        &format!(
            "[[routes]]\nsni = \"{api}\"\nendpoints = [\"{api_up}\"]\n\n[[routes]]\nsni = \"{web}\"\nendpoints = [\"{web_up}\"]\n"
        ),
    );

    // Two sidecars: web calls api through its upstream port, directly (one datacenter, mode none).
    let dir = TempDir::new("prom-sidecars");
    let d = |rel: &str| dir.0.join(rel).display().to_string();
    meshgate_ok(&["ca", "init", "--trust-domain", TD, "--out", &d("ca")]);
    for svc in ["web", "api"] {
        issue_leaf(&d("ca"), svc, "dc1", &d(&format!("certs/{svc}")));
    }
    let app = line_app("api: ");
    let (web_public, api_public, upstream) = (free_port(), free_port(), free_port());
    let web_admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let api_admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    write_web_api_catalog(&dir.0, web_public, upstream, app, api_public);
    let mut sidecars = Vec::new();
    for (svc, admin) in [("web", web_admin), ("api", api_admin)] {
        std::fs::write(
            dir.0.join(format!("{svc}.toml")),
            sidecar_toml(svc, "dc1", &admin.to_string(), "catalog", TD, "deny", ""),
        )
        .expect("config");
        let p = Proc::start_in(
            if svc == "web" {
                "web sidecar"
            } else {
                "api sidecar"
            },
            None,
            &[
                env!("CARGO_BIN_EXE_meshgate"),
                "sidecar",
                "--config",
                &d(&format!("{svc}.toml")),
            ],
        );
        wait_for(Duration::from_secs(15), "sidecar ready", || {
            http_get(admin, "/ready").filter(|b| b == "ready\n")
        });
        sidecars.push(p);
    }
    let _dump = common::DumpOnPanic::new(&sidecars.iter().collect::<Vec<_>>());

    let prom = Prometheus::start(&[
        ("meshgate-gateway", vec![gw.admin]),
        ("meshgate-sidecar", vec![web_admin, api_admin]),
    ]);
    let _dump_prom = common::DumpOnPanic::new(&[&prom.proc]);

    // Traffic, counted by the test: 7 connections to api, 3 to web through the gateway, 4 calls
    // from web to api through the sidecars.
    let client = meshgate_tlskit::Pki::new("test CA")
        .expect("ca")
        .client_config(&[])
        .expect("client");
    let (mut to_upstream, mut to_downstream) = (0u64, 0u64);
    let mut per_service = BTreeMap::new();
    for (name, service, n) in [(&api, "api", 7), (&web, "web", 3)] {
        let hello = meshgate_tlskit::client_hello_bytes(client.clone(), name).expect("hello");
        for _ in 0..n {
            let (sent, got) = one_connection(gw.listen, &hello, UP);
            assert_eq!(got, DOWN as u64, "the upstream's answer arrived whole");
            to_upstream += sent;
            to_downstream += got;
        }
        per_service.insert(service.to_owned(), f64::from(n));
    }
    // Each upstream reports a connection once it has answered it.
    let received: u64 = [(&api_rx, 7), (&web_rx, 3)]
        .into_iter()
        .flat_map(|(rx, n)| {
            (0..n).map(move |_| {
                rx.recv_timeout(Duration::from_secs(10))
                    .expect("upstream count")
            })
        })
        .sum();
    assert_eq!(
        received, to_upstream,
        "the upstreams received what the test sent"
    );
    const CALLS: u32 = 4;
    for i in 0..CALLS {
        let s = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], upstream)))
            .expect("upstream port");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut r = BufReader::new(s);
        r.get_mut()
            .write_all(format!("call {i}\n").as_bytes())
            .expect("call");
        let mut line = String::new();
        r.read_line(&mut line).expect("answer");
        assert_eq!(line, format!("api: call {i}\n"));
    }

    // What Prometheus says, against the test's own counts.
    prom.wait_equal(
        "sum by (service) (meshgate_destination_connections_total{job=\"meshgate-gateway\"})",
        "service",
        &per_service,
    );
    let bytes = BTreeMap::from([
        ("to_upstream".to_owned(), to_upstream as f64),
        ("to_downstream".to_owned(), to_downstream as f64),
    ]);
    prom.wait_equal(
        "sum by (direction) (meshgate_bytes_total{job=\"meshgate-gateway\"})",
        "direction",
        &bytes,
    );
    let calls = BTreeMap::from([("ok".to_owned(), f64::from(CALLS))]);
    prom.wait_equal(
        "sum by (outcome) (meshgate_sidecar_upstream_connections_total{job=\"meshgate-sidecar\",upstream=\"api\"})",
        "outcome",
        &calls,
    );
    let allowed = BTreeMap::from([("allowed".to_owned(), f64::from(CALLS))]);
    prom.wait_equal(
        "sum by (outcome) (meshgate_sidecar_inbound_connections_total{job=\"meshgate-sidecar\"})",
        "outcome",
        &allowed,
    );
    let ready = BTreeMap::from([
        ("meshgate-gateway".to_owned(), 1.0),
        ("meshgate-sidecar".to_owned(), 2.0),
    ]);
    prom.wait_equal("sum by (job) (meshgate_ready)", "job", &ready);
    eprintln!(
        "figure: Prometheus vs test: connections per destination {per_service:?} (both), bytes {bytes:?} (both), sidecar calls {CALLS} (both)"
    );

    // promtool accepts every exposition, and docs/operations.md lists every family scraped.
    let documented = metric_names(&operations_doc());
    for (who, admin) in [
        ("gateway", gw.admin),
        ("web sidecar", web_admin),
        ("api sidecar", api_admin),
    ] {
        let text = http_get(admin, "/metrics").expect("metrics");
        promtool(&["check", "metrics"], Some(&text));
        for family in families(&text) {
            assert!(
                documented.contains(&family),
                "{who} exports {family}, which docs/operations.md does not list"
            );
        }
    }
}
