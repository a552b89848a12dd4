//! The authority's certificates verify with rustls' WebPKI (the same checks a sidecar makes), carry the
//! identity Consul puts in them, and survive a round trip through their directory.

use meshgate_ca::{service_identity, Authority, LeafRequest, DEFAULT_LEAF_LIFETIME};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::RootCertStore;
use std::sync::Arc;

fn ders(pem: &str) -> Vec<CertificateDer<'static>> {
    rustls::pki_types::pem::PemObject::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("pem")
}

fn request(service: &str, dc: &str) -> LeafRequest {
    LeafRequest {
        service: service.into(),
        namespace: "default".into(),
        datacenter: dc.into(),
        lifetime: DEFAULT_LEAF_LIFETIME,
    }
}

/// Verifies `chain` (leaf first) as both a TLS server and a TLS client against `roots`.
fn verifies(chain_pem: &str, roots_pem: &str) -> Result<(), rustls::Error> {
    let chain = ders(chain_pem);
    let mut roots = RootCertStore::empty();
    for r in ders(roots_pem) {
        roots.add(r).expect("root");
    }
    let provider = rustls::crypto::ring::default_provider();
    let parsed = rustls::server::ParsedCertificate::try_from(&chain[0])?;
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        &roots,
        &chain[1..],
        UnixTime::now(),
        provider.signature_verification_algorithms.all,
    )?;
    let client = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(provider),
    )
    .build()
    .expect("verifier");
    client
        .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
        .map(|_| ())
}

#[test]
fn root_and_intermediate_issue_verifiable_spiffe_leaves() {
    let root = Authority::init(None).expect("root");
    let td = root.trust_domain().to_owned();
    assert!(td.ends_with(".consul") && td.len() == 36 + 7, "{td}");

    let web = root.issue(&request("web", "dc1")).expect("leaf");
    assert_eq!(ders(&web.cert_pem).len(), 1, "a root's leaf has no chain");
    verifies(&web.cert_pem, &web.roots_pem).expect("web verifies");
    let id = service_identity(&ders(&web.cert_pem)[0]).expect("identity");
    assert_eq!(id.uri(), format!("spiffe://{td}/ns/default/dc/dc1/svc/web"));

    // A secondary datacenter's intermediate, saved and loaded back, issues leaves that chain to the root.
    let dir = std::env::temp_dir().join(format!("meshgate-ca-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    root.intermediate("dc2")
        .expect("intermediate")
        .save(&dir)
        .expect("save");
    let mode = std::fs::metadata(dir.join("key.pem"))
        .expect("key")
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let dc2 = Authority::load(&dir).expect("load");
    assert_eq!(dc2.trust_domain(), td);
    let api = dc2.issue(&request("api", "dc2")).expect("leaf");
    assert_eq!(ders(&api.cert_pem).len(), 2, "leaf + intermediate");
    verifies(&api.cert_pem, &api.roots_pem).expect("api verifies through the intermediate");
    assert_eq!(
        service_identity(&ders(&api.cert_pem)[0])
            .expect("id")
            .service,
        "api"
    );
    let _ = std::fs::remove_dir_all(&dir);

    // Another mesh's root does not vouch for it.
    let other = Authority::init(Some("other.consul")).expect("other root");
    assert!(verifies(&api.cert_pem, other.roots_pem()).is_err());
}

#[test]
fn leaf_says_what_consul_leaves_say() {
    let root = Authority::init(Some("11111111-2222-3333-4444-555555555555.consul")).expect("root");
    let leaf = root.issue(&request("web", "dc1")).expect("leaf");
    let der = &ders(&leaf.cert_pem)[0];
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("x509");
    let eku = cert
        .extended_key_usage()
        .expect("eku")
        .expect("present")
        .value;
    assert!(eku.server_auth && eku.client_auth);
    assert!(!cert.is_ca());
    let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    // 72 h plus the one-minute backdating.
    assert_eq!(lifetime, 72 * 3600 + 60);
    assert!(Authority::init(Some("bad/domain")).is_err());
}
