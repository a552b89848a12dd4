//! Mesh mutual TLS for a sidecar, IO-free: the rustls configurations it serves and dials with, built
//! from PEM (ours from `meshgate ca`, or a Consul CA's roots and leaf).
//!
//! - **Inbound** ([`MeshTls::server_config`]): present the service's leaf; require a client certificate
//!   that chains to the mesh roots and is good for client authentication (WebPKI). Who the caller is comes
//!   from its SPIFFE URI ([`peer_identity`]); authorising it is the intentions' job, after the handshake.
//! - **Outbound** ([`MeshTls::client_config`]): present the leaf; accept the server only if its chain
//!   verifies against the mesh roots **and** its SPIFFE URI names the expected service. Mesh leaves carry
//!   no DNS names, so the SNI (which routes through gateways) is not what is verified — the identity is.
//!   The datacenter in the URI is not compared: a service is the same service wherever it runs (Consul
//!   matches the same way), while the trust domain, namespace and name must all match.

use meshgate_ca::{service_identity, ServiceIdentity};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};
use std::sync::Arc;
use thiserror::Error;

/// Certificates that cannot be used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM input held nothing usable.
    #[error("{what}: {message}")]
    Pem {
        /// Which input (`certificate`, `key`, `roots`).
        what: &'static str,
        /// Why.
        message: String,
    },
    /// The leaf has no SPIFFE service URI.
    #[error(
        "the certificate carries no spiffe://<td>/ns/<ns>/dc/<dc>/svc/<svc> URI; not a mesh leaf"
    )]
    NoIdentity,
    /// rustls refused the combination (key does not match, unsupported algorithm...).
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

/// ring's suites with TLS 1.3's AES-128-GCM-SHA256 first (ring's default puts AES-256-GCM-SHA384
/// first). Both ends of a mesh connection are our sidecars or Consul's proxies, and the client's order
/// decides: AES-128 is what Consul's own proxy negotiates, and on CPUs with SHA-256 instructions but
/// none for SHA-512 the SHA-384 handshake hashing and AES-256's extra rounds cost measurably more per
/// handshake and per GB (docs/performance.md, sidecar section).
fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(p)
}

/// The identity an upstream must present: trust domain, namespace and service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// Trust domain.
    pub trust_domain: String,
    /// Namespace.
    pub namespace: String,
    /// Service.
    pub service: String,
}

impl Expected {
    /// From a SPIFFE service URI (the upstream plan's `identity`).
    pub fn from_spiffe(uri: &str) -> Option<Expected> {
        let (td, ns, _dc, svc) = meshgate_mesh::names::parse_spiffe_id(uri)?;
        Some(Expected {
            trust_domain: td.to_owned(),
            namespace: ns.to_owned(),
            service: svc.to_owned(),
        })
    }

    /// Whether `id` is this service.
    pub fn matches(&self, id: &ServiceIdentity) -> bool {
        id.trust_domain == self.trust_domain
            && id.namespace == self.namespace
            && id.service == self.service
    }
}

impl std::fmt::Display for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/dc/*/svc/{}",
            self.trust_domain, self.namespace, self.service
        )
    }
}

/// The server presented a valid certificate for another service.
#[derive(Debug, Error)]
#[error("server identity {got} is not the expected {expected}")]
struct WrongIdentity {
    got: String,
    expected: String,
}

/// A service's mesh TLS material, parsed once per certificate change.
pub struct MeshTls {
    identity: ServiceIdentity,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
    server: Arc<ServerConfig>,
    not_after: i64,
}

impl std::fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshTls")
            .field("identity", &self.identity.uri())
            .field("chain", &self.chain.len())
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

impl MeshTls {
    /// From the leaf (followed by intermediates), its key and the mesh roots, all PEM.
    pub fn from_pem(
        cert_pem: &[u8],
        key_pem: &[u8],
        roots_pem: &[u8],
    ) -> Result<MeshTls, TlsError> {
        let pem_err = |what: &'static str| {
            move |e: rustls::pki_types::pem::Error| TlsError::Pem {
                what,
                message: e.to_string(),
            }
        };
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(pem_err("certificate"))?;
        let leaf = chain.first().ok_or(TlsError::Pem {
            what: "certificate",
            message: "no CERTIFICATE block".into(),
        })?;
        let identity = service_identity(leaf).ok_or(TlsError::NoIdentity)?;
        let not_after = meshgate_ca::not_after(leaf).unwrap_or(0);
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(pem_err("key"))?;
        let mut roots = RootCertStore::empty();
        for root in CertificateDer::pem_slice_iter(roots_pem) {
            roots.add(root.map_err(pem_err("roots"))?)?;
        }
        if roots.is_empty() {
            return Err(TlsError::Pem {
                what: "roots",
                message: "no CERTIFICATE block".into(),
            });
        }
        let roots = Arc::new(roots);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
        let server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        Ok(MeshTls {
            identity,
            chain,
            key,
            roots,
            server: Arc::new(server),
            not_after,
        })
    }

    /// The identity this sidecar presents.
    pub fn identity(&self) -> &ServiceIdentity {
        &self.identity
    }

    /// When the leaf expires (Unix seconds).
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// Inbound: our leaf, callers must present a mesh client certificate.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// Outbound to a service that must present `expect`.
    pub fn client_config(&self, expect: Expected) -> Result<Arc<ClientConfig>, TlsError> {
        let provider = provider();
        let verifier = SpiffeVerifier {
            roots: self.roots.clone(),
            expect,
            provider: provider.clone(),
        };
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        Ok(Arc::new(config))
    }
}

/// The caller's identity after an inbound handshake.
pub fn peer_identity(conn: &rustls::CommonState) -> Option<ServiceIdentity> {
    conn.peer_certificates()?
        .first()
        .and_then(|c| service_identity(c))
}

/// Chain to the mesh roots, then the SPIFFE identity; never the DNS name.
#[derive(Debug)]
struct SpiffeVerifier {
    roots: Arc<RootCertStore>,
    expect: Expected,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        match service_identity(end_entity) {
            Some(id) if self.expect.matches(&id) => Ok(ServerCertVerified::assertion()),
            got => Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(WrongIdentity {
                    got: got.map_or_else(|| "(none)".to_owned(), |id| id.uri()),
                    expected: self.expect.to_string(),
                })),
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshgate_ca::{Authority, LeafRequest, DEFAULT_LEAF_LIFETIME};
    use rustls::{ClientConnection, ServerConnection};

    fn leaf(ca: &Authority, service: &str, dc: &str) -> MeshTls {
        let l = ca
            .issue(&LeafRequest {
                service: service.into(),
                namespace: "default".into(),
                datacenter: dc.into(),
                lifetime: DEFAULT_LEAF_LIFETIME,
            })
            .expect("issue");
        MeshTls::from_pem(
            l.cert_pem.as_bytes(),
            l.key_pem.as_bytes(),
            l.roots_pem.as_bytes(),
        )
        .expect("mesh tls")
    }

    fn expect(ca: &Authority, service: &str) -> Expected {
        Expected {
            trust_domain: ca.trust_domain().into(),
            namespace: "default".into(),
            service: service.into(),
        }
    }

    /// Runs a handshake in memory; Ok(the server's view of the caller) or the first error, by side.
    fn handshake(
        client: Arc<ClientConfig>,
        server: Arc<ServerConfig>,
    ) -> Result<Option<ServiceIdentity>, String> {
        let name = ServerName::try_from("api.default.dc2.internal.example.consul")
            .expect("name")
            .to_owned();
        let mut c = ClientConnection::new(client, name).map_err(|e| e.to_string())?;
        let mut s = ServerConnection::new(server).map_err(|e| e.to_string())?;
        for _ in 0..10 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).map_err(|e| e.to_string())?;
            }
            s.read_tls(&mut buf.as_slice()).map_err(|e| e.to_string())?;
            s.process_new_packets()
                .map_err(|e| format!("server: {e}"))?;
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).map_err(|e| e.to_string())?;
            }
            c.read_tls(&mut buf.as_slice()).map_err(|e| e.to_string())?;
            c.process_new_packets()
                .map_err(|e| format!("client: {e}"))?;
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(peer_identity(&s));
            }
        }
        Err("handshake did not finish".into())
    }

    #[test]
    fn aes_128_gcm_sha256_comes_first_and_no_suite_is_dropped() {
        let ours = provider();
        let ring = rustls::crypto::ring::default_provider();
        assert_eq!(
            ours.cipher_suites[0].suite(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );
        let mut a: Vec<_> = ours.cipher_suites.iter().map(|s| s.suite()).collect();
        let mut b: Vec<_> = ring.cipher_suites.iter().map(|s| s.suite()).collect();
        a.sort_by_key(|s| u16::from(*s));
        b.sort_by_key(|s| u16::from(*s));
        assert_eq!(a, b);
    }

    #[test]
    fn mutual_tls_with_spiffe_identities() {
        let root = Authority::init(None).expect("root");
        let dc2 = root.intermediate("dc2").expect("intermediate");
        let web = leaf(&root, "web", "dc1");
        let api = leaf(&dc2, "api", "dc2");

        let id = handshake(
            web.client_config(expect(&root, "api")).expect("client"),
            api.server_config(),
        )
        .expect("web → api");
        assert_eq!(id.expect("caller").uri(), web.identity().uri());

        // web expecting db but reaching api: refused by web, naming both identities.
        let e = handshake(
            web.client_config(expect(&root, "db")).expect("client"),
            api.server_config(),
        )
        .expect_err("wrong service");
        assert!(
            e.starts_with("client:") && e.contains("svc/api") && e.contains("svc/db"),
            "{e}"
        );

        // A caller from another mesh is refused by the server; so is a server from another mesh.
        let stranger_ca = Authority::init(Some("other.consul")).expect("other");
        let stranger = leaf(&stranger_ca, "web", "dc1");
        let e = handshake(
            stranger
                .client_config(expect(&root, "api"))
                .expect("client"),
            api.server_config(),
        )
        .expect_err("foreign client");
        assert!(e.contains("client:") || e.contains("server:"), "{e}");
        let e = handshake(
            web.client_config(expect(&root, "api")).expect("client"),
            stranger.server_config(),
        )
        .expect_err("foreign server");
        assert!(e.starts_with("client:"), "{e}");
    }

    #[test]
    fn client_without_certificate_is_refused() {
        let root = Authority::init(None).expect("root");
        let api = leaf(&root, "api", "dc2");
        let mut roots = RootCertStore::empty();
        for r in CertificateDer::pem_slice_iter(root.roots_pem().as_bytes()) {
            roots.add(r.expect("pem")).expect("root");
        }
        let anonymous = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SpiffeVerifier {
                roots: Arc::new(roots),
                expect: expect(&root, "api"),
                provider: provider(),
            }))
            .with_no_client_auth();
        let e = handshake(Arc::new(anonymous), api.server_config()).expect_err("no cert");
        assert!(e.contains("server:"), "{e}");
    }

    #[test]
    fn bad_pem_is_refused_by_name() {
        let root = Authority::init(None).expect("root");
        let l = root
            .issue(&LeafRequest {
                service: "web".into(),
                namespace: "default".into(),
                datacenter: "dc1".into(),
                lifetime: DEFAULT_LEAF_LIFETIME,
            })
            .expect("issue");
        let e = MeshTls::from_pem(b"", l.key_pem.as_bytes(), l.roots_pem.as_bytes())
            .expect_err("no cert");
        assert!(e.to_string().starts_with("certificate:"), "{e}");
        let e = MeshTls::from_pem(l.cert_pem.as_bytes(), b"junk", l.roots_pem.as_bytes())
            .expect_err("no key");
        assert!(e.to_string().starts_with("key:"), "{e}");
        // A CA certificate is not a service leaf.
        let e = MeshTls::from_pem(
            root.roots_pem().as_bytes(),
            l.key_pem.as_bytes(),
            l.roots_pem.as_bytes(),
        )
        .expect_err("not a leaf");
        assert!(matches!(e, TlsError::NoIdentity), "{e}");
    }
}
