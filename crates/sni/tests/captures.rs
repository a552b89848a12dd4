//! Real ClientHellos (captured from openssl s_client and curl, and made live by rustls) read in every
//! prefix and every split: the answer never depends on how the bytes arrive.

use meshgate_sni::synth::{refragment, HelloSpec};
use meshgate_sni::{HelloReader, Limits, Progress, Reject};
use proptest::prelude::*;
use std::sync::Arc;

fn capture(name: &str) -> Vec<u8> {
    let path = format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A ClientHello exactly as rustls sends it, with or without ALPN.
fn rustls_hello(sni: &str, alpn: &[&[u8]]) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).expect("server name");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let mut out = Vec::new();
    conn.write_tls(&mut out).expect("write_tls");
    out
}

fn read_all(bytes: &[u8]) -> Result<Progress, Reject> {
    HelloReader::new(Limits::default()).feed(bytes)
}

/// Every prefix gives "need more"; the whole input gives `want`; and so does feeding it byte by byte.
fn check_all_prefixes(bytes: &[u8], want: &Result<Progress, Reject>) {
    for end in 0..bytes.len() {
        assert_eq!(
            read_all(&bytes[..end]),
            Ok(Progress::NeedMore),
            "prefix of {end} bytes"
        );
    }
    assert_eq!(&read_all(bytes), want);
    let mut reader = HelloReader::new(Limits::default());
    let mut last = Ok(Progress::NeedMore);
    for b in bytes {
        last = reader.feed(std::slice::from_ref(b));
    }
    assert_eq!(&last, want);
}

fn expect_hello(bytes: &[u8], sni: Option<&str>, alpn: &[&str]) -> Result<Progress, Reject> {
    let got = read_all(bytes);
    let Ok(Progress::Done(h)) = &got else {
        panic!("expected a hello, got {got:?}");
    };
    assert_eq!(h.sni.as_deref(), sni);
    let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    assert_eq!(h.alpn, alpn);
    assert_eq!(h.consumed, bytes.len());
    got
}

#[test]
fn captured_hellos_every_prefix() {
    let cases: &[(&str, Option<&str>, &[&str])] = &[
        (
            "openssl_sni_alpn.bin",
            Some("api.default.dc2.internal.5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul"),
            &["h2", "http/1.1"],
        ),
        ("openssl_sni.bin", Some("web.example"), &[]),
        ("openssl_no_sni.bin", None, &[]),
        ("openssl_tls12.bin", Some("legacy.example"), &[]),
        (
            "curl_h2.bin",
            Some("mixed.case.example"),
            &["h2", "http/1.1"],
        ),
        (
            "curl_http11.bin",
            Some("db.default.dc1.internal.td.consul"),
            &["http/1.1"],
        ),
    ];
    for (file, sni, alpn) in cases {
        let bytes = capture(file);
        let want = expect_hello(&bytes, *sni, alpn);
        check_all_prefixes(&bytes, &want);
    }
}

#[test]
fn rustls_hellos_every_prefix() {
    for alpn in [&[][..], &[&b"h2"[..], b"http/1.1"][..]] {
        let bytes = rustls_hello("web.default.dc1.internal.td.consul", alpn);
        let names: Vec<&str> = alpn
            .iter()
            .map(|p| std::str::from_utf8(p).expect("ascii"))
            .collect();
        let want = expect_hello(&bytes, Some("web.default.dc1.internal.td.consul"), &names);
        check_all_prefixes(&bytes, &want);
    }
}

#[test]
fn post_quantum_sized_hello_in_two_records() {
    let bytes = HelloSpec::new(Some("pq.example"))
        .post_quantum()
        .padding(400)
        .build();
    assert!(bytes.len() > 1700, "{}", bytes.len());
    let split = refragment(&bytes, &[1000]).expect("refragment");
    let Ok(Progress::Done(h)) = read_all(&split) else {
        panic!("no hello")
    };
    assert_eq!(h.records, 2);
    assert_eq!(h.sni.as_deref(), Some("pq.example"));
}

/// All inputs whose answers the properties compare: captures, rustls, synthesised.
fn corpus() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = [
        "openssl_sni_alpn.bin",
        "openssl_no_sni.bin",
        "curl_h2.bin",
        "openssl_tls12.bin",
    ]
    .iter()
    .map(|f| capture(f))
    .collect();
    v.push(rustls_hello("a.example", &[b"h2"]));
    v.push(
        HelloSpec::new(Some("pq.example"))
            .post_quantum()
            .padding(3000)
            .build(),
    );
    v.push(
        HelloSpec::new(Some("b.example"))
            .extra_host_name("c.example")
            .build(),
    );
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any split into records and then into reads gives the same answer as the hello in one piece.
    #[test]
    fn any_records_any_reads(
        which in 0usize..7,
        records in proptest::collection::vec(1usize..600, 0..6),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let base = &corpus()[which];
        let want = read_all(base);
        let bytes = refragment(base, &records).expect("corpus is handshake records");
        let mut cut_at: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        cut_at.sort_unstable();
        let mut reader = HelloReader::new(Limits::default());
        let mut last = Ok(Progress::NeedMore);
        let mut start = 0;
        for end in cut_at.into_iter().chain(std::iter::once(bytes.len())) {
            last = reader.feed(&bytes[start..end]);
            start = end;
            if !matches!(last, Ok(Progress::NeedMore)) {
                break;
            }
        }
        // Record count and consumed length depend on the framing; everything else must match.
        let normalise = |r: Result<Progress, Reject>| match r {
            Ok(Progress::Done(mut h)) => { h.records = 0; h.consumed = 0; Ok(Progress::Done(h)) }
            other => other,
        };
        prop_assert_eq!(normalise(last), normalise(want));
    }

    /// Arbitrary bytes, in arbitrary reads, never panic and never read past a rejection.
    #[test]
    fn garbage_never_panics(reads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..6)) {
        let reads: Vec<&[u8]> = reads.iter().map(Vec::as_slice).collect();
        let _ = meshgate_sni::fuzz_reads(&reads, Limits::default());
    }

    /// Truncating or corrupting a real hello gives "need more" or a rejection, never a panic.
    #[test]
    fn corrupted_hellos_never_panic(which in 0usize..7, pos in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
        let mut bytes = corpus()[which].clone();
        let p = pos.index(bytes.len());
        bytes[p] = byte;
        bytes.truncate(cut.index(bytes.len() + 1));
        let _ = read_all(&bytes);
    }
}
