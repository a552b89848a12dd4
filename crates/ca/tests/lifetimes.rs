//! Any leaf lifetime is either issued exactly (notAfter − notBefore = lifetime + the one-minute
//! backdating) or refused as out of range: never a panic, never a wrapped or clamped date.

use meshgate_ca::{Authority, LeafRequest};
use proptest::prelude::*;
use std::sync::OnceLock;
use std::time::Duration;

/// The documented range: 1 h to 8760 h (a year).
const MIN: u64 = 3600;
const MAX: u64 = 8760 * 3600;

fn root() -> &'static Authority {
    static ROOT: OnceLock<Authority> = OnceLock::new();
    ROOT.get_or_init(|| Authority::init(None).expect("root"))
}

fn issue(lifetime: Duration) -> Result<i64, String> {
    let leaf = root()
        .issue(&LeafRequest {
            service: "web".into(),
            namespace: "default".into(),
            datacenter: "dc1".into(),
            lifetime,
        })
        .map_err(|e| e.to_string())?;
    let der = rustls::pki_types::pem::PemObject::pem_slice_iter(leaf.cert_pem.as_bytes())
        .next()
        .expect("a certificate")
        .map(|c: rustls::pki_types::CertificateDer<'static>| c.to_vec())
        .expect("pem");
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("x509");
    Ok(cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp())
}

fn check(lifetime: Duration) {
    let secs = lifetime.as_secs();
    let in_range = lifetime >= Duration::from_secs(MIN) && lifetime <= Duration::from_secs(MAX);
    match issue(lifetime) {
        Ok(span) => {
            assert!(in_range, "{lifetime:?} issued");
            // Whole seconds on both ends: a fractional lifetime may round either way.
            let want = secs as i64 + 60;
            assert!(span == want || span == want + 1, "{lifetime:?}: {span}s");
        }
        Err(e) => {
            assert!(!in_range, "{lifetime:?} refused: {e}");
            assert!(e.contains("out of range") && e.contains("8760 h"), "{e}");
        }
    }
}

#[test]
fn the_limits_and_what_is_just_outside_them() {
    for secs in [
        0,
        1,
        MIN - 1,
        MIN,
        MAX,
        MAX + 1,
        100_000_000 * 3600,
        u64::MAX,
    ] {
        check(Duration::from_secs(secs));
    }
    check(Duration::new(MAX, 1));
    check(Duration::new(u64::MAX, 999_999_999));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    #[test]
    fn any_lifetime_is_issued_exactly_or_refused(
        secs in prop_oneof![any::<u64>(), 0..2 * MAX, (MAX - 2)..(MAX + 2), (MIN - 2)..(MIN + 2)],
        nanos in prop_oneof![Just(0u32), 0..1_000_000_000u32],
    ) {
        check(Duration::new(secs, nanos));
    }
}
