//! The properties meshgate's fuzzers check, one function per target. Each takes the fuzzer's raw bytes and
//! panics only when a property fails (a panic inside the code under test counts as a failure too), so the
//! same function serves `cargo fuzz` (the targets in `fuzz/`, nightly) and the corpus replay in
//! `tests/corpus.rs` (stable, part of `cargo test --workspace`): every input a fuzzer ever kept, or a crash it
//! found, stays a regression test.
//!
//! The properties go beyond "does not panic" wherever there is a second way to compute the answer:
//! the ClientHello outcome does not depend on how the stream was split into reads; a Consul SNI name
//! printed and parsed again is the same name; the route table answers as a naive scan of its routes does.

use meshgate_route::{Match, RouteSpec, RouteTableBuilder};
use meshgate_sni::{Limits, Progress};
use std::net::SocketAddr;
use std::path::Path;

/// One property: takes the fuzzer's bytes, panics when the property fails.
pub type Property = fn(&[u8]);

/// The targets, by name (the names of `fuzz/fuzz_targets/*.rs` and of the `corpus/` directories).
pub const TARGETS: [(&str, Property); 5] = [
    ("client_hello", client_hello),
    ("sni_name", sni_name),
    ("route_table", route_table),
    ("config", config),
    ("catalog", catalog),
];

/// ClientHello reader, fed as a list of reads (see [`meshgate_sni::split_fuzz_input`]). Never panics, and
/// the answer is the one the same bytes give in a single read: a client cannot change where it is routed
/// by how it cuts its segments. A name it yields is already normalised.
pub fn client_hello(data: &[u8]) {
    let reads = meshgate_sni::split_fuzz_input(data);
    let split = meshgate_sni::fuzz_reads(&reads, Limits::default());
    let whole: Vec<u8> = reads.concat();
    let once = meshgate_sni::fuzz_reads(&[&whole], Limits::default());
    assert_eq!(split, once, "outcome depends on the read boundaries");
    if let Ok(Progress::Done(hello)) = &split {
        if let Some(sni) = &hello.sni {
            let again = meshgate_sni::normalize_host_name(sni.as_bytes());
            assert_eq!(again.as_ref(), Ok(sni), "normalisation is not idempotent");
        }
    }
}

/// Consul SNI names: any string parses or is refused; a parsed name printed and parsed again is the same
/// name (the gateway's per-destination labels and the sidecar's dialled names agree).
pub fn sni_name(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(name) = meshgate_mesh::SniName::parse(text) {
        let printed = name.to_string();
        assert_eq!(
            meshgate_mesh::SniName::parse(&printed).as_ref(),
            Some(&name),
            "{text:?} printed as {printed:?} parses differently"
        );
        let _ = name.datacenter();
    }
    let _ = meshgate_mesh::names::parse_spiffe_id(text);
}

/// Route table: patterns and names drawn from a small alphabet (so that valid patterns, overlaps and
/// wildcards are common) are added to a table; every lookup answers as a scan of the accepted routes does
/// (exact first, then the longest wildcard suffix, else reject).
pub fn route_table(data: &[u8]) {
    // Input: strings separated by 0xff; the first byte splits them into patterns and names.
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let words: Vec<String> = rest.split(|&b| b == 0xff).map(word).collect();
    let (patterns, names) = words.split_at(usize::from(head).min(words.len()));
    let endpoint = vec![SocketAddr::from(([127, 0, 0, 1], 1))];
    let mut builder = RouteTableBuilder::new();
    // (normalised pattern, id) of each accepted route.
    let mut accepted: Vec<(String, usize)> = Vec::new();
    for p in patterns {
        let before = builder.contains(p);
        match builder.add(RouteSpec::new(p.as_str(), endpoint.clone())) {
            Ok(id) => {
                assert!(!before, "{p:?} added twice");
                accepted.push((String::new(), id));
            }
            Err(_) => continue,
        }
    }
    let table = builder.build();
    for (shown, id) in &mut accepted {
        shown.clone_from(&table.routes()[*id].pattern);
    }
    for raw in names {
        let Ok(name) = meshgate_sni::normalize_host_name(raw.as_bytes()) else {
            continue;
        };
        let exact = accepted.iter().find(|(p, _)| *p == name).map(|&(_, id)| id);
        let wildcard = accepted
            .iter()
            .filter_map(|(p, id)| {
                let suffix = p.strip_prefix("*.")?;
                let head = name.strip_suffix(suffix)?.strip_suffix('.')?;
                (!head.is_empty()).then_some((suffix.len(), *id))
            })
            .max_by_key(|&(len, _)| len)
            .map(|(_, id)| id);
        let expected = exact.or(wildcard);
        let got = match table.lookup(&name) {
            Match::Exact(_, id) | Match::Wildcard(_, id) => Some(id),
            Match::Fallback(..) | Match::Reject => None,
        };
        assert_eq!(got, expected, "lookup of {name:?} in {accepted:?}");
    }
}

/// One word of the route-table input: bytes mapped onto `a b c - . *` plus a rare upper-case letter.
fn word(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 8] = b"abc-.*AX";
    bytes
        .iter()
        .map(|&b| char::from(ALPHABET[usize::from(b % 8)]))
        .collect()
}

/// The gateway's and the sidecar's TOML configuration: any text is loaded or refused with an error that
/// formats (file, line, field), never a panic.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("fuzz.toml");
    if let Err(e) = meshgate_config::Config::parse(text, file) {
        let _ = e.to_string();
    }
    if let Err(e) = meshgate_config::SidecarConfig::parse(text, file) {
        let _ = e.to_string();
    }
}

/// Consul registrations and config entries in each format Consul users write. The first byte picks the
/// file name (HCL, JSON, YAML, TOML, or no extension: detected from the content); any text is loaded or
/// refused with a located error, never a panic, and an error's line and column lie inside the file.
pub fn catalog(data: &[u8]) {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let file = ["f.hcl", "f.json", "f.yaml", "f.toml", "f"][usize::from(head % 5)];
    if let Err(e) = meshgate_mesh::load_document(text, Path::new(file)) {
        let lines = text.matches('\n').count() + 1;
        assert!(
            e.line <= lines,
            "error line {} in a {lines}-line file: {e}",
            e.line
        );
        let _ = e.to_string();
    }
}
