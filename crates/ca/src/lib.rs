//! The mesh certificate authority, Consul's way: the primary datacenter holds the **root** for a trust
//! domain (`<uuid>.consul`), a secondary datacenter may hold an **intermediate** signed by that root, and
//! either issues **service leaves** carrying the SPIFFE URI `spiffe://<td>/ns/<ns>/dc/<dc>/svc/<svc>`, good
//! for client and server authentication, 72 hours by default. Keys are ECDSA P-256, as Consul's built-in CA
//! makes them. All signing is rcgen's; nothing here is hand-written crypto.
//!
//! It also reads identities back out of certificates (ours or a Consul CA's), which is what a sidecar
//! authorises callers by. A mesh gateway never uses this crate: it holds no key.
//!
//! An authority on disk is a directory: `cert.pem` (its certificate), `key.pem` (its key, mode 0600),
//! `chain.pem` (intermediates between it and the root, often empty) and `roots.pem` (the trust anchors).
//! Files are written as [`files`] says: atomically, keys 0600 whatever was there before, never through a
//! symbolic link.

pub mod files;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;
use time::OffsetDateTime;

/// Lifetime of a service leaf unless asked otherwise (Consul's `LeafCertTTL` default).
pub const DEFAULT_LEAF_LIFETIME: Duration = Duration::from_secs(72 * 3600);
/// Lifetime of a root.
pub const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of a datacenter intermediate.
pub const INTERMEDIATE_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// Shortest leaf lifetime issued: shorter would expire before a sidecar has polled its files.
pub const MIN_LEAF_LIFETIME: Duration = Duration::from_secs(3600);
/// Longest leaf lifetime issued: an intermediate's, a year (8760 h); Consul's leaves are hours or days.
pub const MAX_LEAF_LIFETIME: Duration = INTERMEDIATE_LIFETIME;
/// Backdating of `notBefore`, so a peer whose clock is slightly behind accepts a fresh certificate.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// File names inside an authority directory.
pub const CERT_FILE: &str = "cert.pem";
/// The authority's (or leaf's) private key.
pub const KEY_FILE: &str = "key.pem";
/// Intermediates between the authority and the root.
pub const CHAIN_FILE: &str = "chain.pem";
/// The trust anchors.
pub const ROOTS_FILE: &str = "roots.pem";

/// What went wrong.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CaError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// rcgen refused (bad key, bad PEM, bad parameters).
    #[error("{context}: {source}")]
    Cert {
        /// What was being done.
        context: String,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// A certificate does not say what it must.
    #[error("{0}")]
    Invalid(String),
    /// A file or a directory on the way to it is a symbolic link; nothing is written through one.
    #[error("{}: is a symbolic link; refusing to write through it", path.display())]
    Symlink {
        /// The link.
        path: PathBuf,
    },
    /// A leaf lifetime outside [`MIN_LEAF_LIFETIME`]..=[`MAX_LEAF_LIFETIME`].
    #[error(
        "a leaf lifetime of {}s is out of range: {}s ({} h) to {}s ({} h)",
        lifetime.as_secs(),
        MIN_LEAF_LIFETIME.as_secs(),
        MIN_LEAF_LIFETIME.as_secs() / 3600,
        MAX_LEAF_LIFETIME.as_secs(),
        MAX_LEAF_LIFETIME.as_secs() / 3600
    )]
    Lifetime {
        /// What was asked.
        lifetime: Duration,
    },
}

fn cert_err(context: impl Into<String>) -> impl FnOnce(rcgen::Error) -> CaError {
    let context = context.into();
    move |source| CaError::Cert { context, source }
}

/// A SPIFFE service identity, as Consul writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceIdentity {
    /// `<uuid>.consul`.
    pub trust_domain: String,
    /// Namespace (`default`).
    pub namespace: String,
    /// Datacenter that issued it.
    pub datacenter: String,
    /// Service name.
    pub service: String,
}

impl ServiceIdentity {
    /// The SPIFFE URI.
    pub fn uri(&self) -> String {
        meshgate_mesh::names::spiffe_id(
            &self.trust_domain,
            &self.namespace,
            &self.datacenter,
            &self.service,
        )
    }
}

impl std::fmt::Display for ServiceIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.uri())
    }
}

/// The URI subject alternative names of a DER certificate.
pub fn uri_sans(der: &[u8]) -> Result<Vec<String>, CaError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| CaError::Invalid(format!("not an X.509 certificate: {e}")))?;
    let mut out = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name {
                out.push((*uri).to_owned());
            }
        }
    }
    Ok(out)
}

/// A DER certificate's serial number as Consul writes it: lowercase hex bytes joined by `:`.
pub fn serial_hex(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let bytes = cert.raw_serial();
    Some(
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
    )
}

/// When a DER certificate expires, in Unix seconds.
pub fn not_after(der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// The service identity a leaf carries (its first SPIFFE service URI), if any.
pub fn service_identity(der: &[u8]) -> Option<ServiceIdentity> {
    uri_sans(der).ok()?.iter().find_map(|u| {
        let (td, ns, dc, svc) = meshgate_mesh::names::parse_spiffe_id(u)?;
        Some(ServiceIdentity {
            trust_domain: td.to_owned(),
            namespace: ns.to_owned(),
            datacenter: dc.to_owned(),
            service: svc.to_owned(),
        })
    })
}

/// A trust domain Consul-style: a fresh cluster id under `.consul`.
pub fn new_trust_domain() -> String {
    format!("{}.consul", uuid::Uuid::new_v4())
}

/// Sets `notBefore` (backdated by [`CLOCK_SKEW`]) and `notAfter`; checked, so no lifetime can panic.
fn validity(params: &mut CertificateParams, lifetime: Duration) -> Result<(), CaError> {
    let now = OffsetDateTime::now_utc();
    let span = |d: Duration| time::Duration::try_from(d).ok();
    let (Some(not_before), Some(not_after)) = (
        span(CLOCK_SKEW).and_then(|d| now.checked_sub(d)),
        span(lifetime).and_then(|d| now.checked_add(d)),
    ) else {
        return Err(CaError::Lifetime { lifetime });
    };
    params.not_before = not_before;
    params.not_after = not_after;
    Ok(())
}

fn ca_params(
    common_name: &str,
    trust_domain: &str,
    lifetime: Duration,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    // Consul puts the trust domain on its CA certificates; readers find it there.
    params.subject_alt_names = vec![SanType::URI(
        format!("spiffe://{trust_domain}")
            .try_into()
            .map_err(cert_err("trust domain URI"))?,
    )];
    validity(&mut params, lifetime)?;
    Ok(params)
}

/// A certificate authority that can sign: the root, or a datacenter's intermediate.
pub struct Authority {
    trust_domain: String,
    /// The authority as an rcgen issuer (same name, key and key id as its certificate on disk).
    issuer: rcgen::Certificate,
    key: KeyPair,
    cert_pem: String,
    chain_pem: String,
    roots_pem: String,
}

/// A service leaf and what a sidecar needs with it.
pub struct Leaf {
    /// The leaf followed by the intermediates up to (not including) the root.
    pub cert_pem: String,
    /// The leaf's private key (PKCS#8 PEM).
    pub key_pem: String,
    /// The trust anchors.
    pub roots_pem: String,
    /// The identity it carries.
    pub identity: ServiceIdentity,
}

/// What a leaf is for.
#[derive(Debug, Clone)]
pub struct LeafRequest {
    /// Service name.
    pub service: String,
    /// Namespace.
    pub namespace: String,
    /// Datacenter of the service.
    pub datacenter: String,
    /// How long it is valid.
    pub lifetime: Duration,
}

fn read(dir: &Path, name: &str) -> Result<String, CaError> {
    let path = dir.join(name);
    std::fs::read_to_string(&path).map_err(|source| CaError::Io { path, source })
}

/// Writes `text` to `dir/name` as [`files::write_files`] does: `secret` files 0600, others 0644, whatever
/// was there before; atomically; never through a symbolic link.
pub fn write_file(dir: &Path, name: &str, text: &str, secret: bool) -> Result<(), CaError> {
    files::write_files(dir, &[files::FileSpec { name, text, secret }])
}

impl Authority {
    /// A new root for `trust_domain` (a fresh `<uuid>.consul` when `None`).
    pub fn init(trust_domain: Option<&str>) -> Result<Authority, CaError> {
        let trust_domain = trust_domain.map_or_else(new_trust_domain, str::to_owned);
        if meshgate_mesh::names::parse_spiffe_id(&format!(
            "spiffe://{trust_domain}/ns/default/dc/x/svc/x"
        ))
        .is_none()
            || trust_domain.contains('/')
        {
            return Err(CaError::Invalid(format!(
                "{trust_domain:?} is not a trust domain (expected a DNS name such as <uuid>.consul)"
            )));
        }
        let key = KeyPair::generate().map_err(cert_err("generating the root key"))?;
        let params = ca_params(
            &format!("meshgate root CA {trust_domain}"),
            &trust_domain,
            ROOT_LIFETIME,
        )?;
        let issuer = params
            .self_signed(&key)
            .map_err(cert_err("signing the root"))?;
        let pem = issuer.pem();
        Ok(Authority {
            trust_domain,
            issuer,
            key,
            cert_pem: pem.clone(),
            chain_pem: String::new(),
            roots_pem: pem,
        })
    }

    /// Reads an authority directory.
    pub fn load(dir: &Path) -> Result<Authority, CaError> {
        let cert_pem = read(dir, CERT_FILE)?;
        let key_pem = read(dir, KEY_FILE)?;
        let chain_pem = match read(dir, CHAIN_FILE) {
            Ok(s) => s,
            Err(CaError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                String::new()
            }
            Err(e) => return Err(e),
        };
        let roots_pem = read(dir, ROOTS_FILE)?;
        let key = KeyPair::from_pem(&key_pem).map_err(cert_err(format!(
            "{}: not a private key",
            dir.join(KEY_FILE).display()
        )))?;
        let params = CertificateParams::from_ca_cert_pem(&cert_pem).map_err(cert_err(format!(
            "{}: not a CA certificate",
            dir.join(CERT_FILE).display()
        )))?;
        let trust_domain = params
            .subject_alt_names
            .iter()
            .find_map(|s| match s {
                SanType::URI(u) => u.as_str().strip_prefix("spiffe://").map(str::to_owned),
                _ => None,
            })
            .ok_or_else(|| {
                CaError::Invalid(format!(
                    "{}: no spiffe://<trust-domain> URI; not a mesh CA",
                    dir.join(CERT_FILE).display()
                ))
            })?;
        // Re-signing the parameters with the same key yields an issuer with the same subject and key
        // id: what an issued certificate's issuer name and authority key id are taken from.
        let issuer = params
            .self_signed(&key)
            .map_err(cert_err("loading the authority"))?;
        Ok(Authority {
            trust_domain,
            issuer,
            key,
            cert_pem,
            chain_pem,
            roots_pem,
        })
    }

    /// Writes the authority directory (see [`files`]: a refused file writes none of them).
    pub fn save(&self, dir: &Path) -> Result<(), CaError> {
        let key = self.key.serialize_pem();
        files::write_files(
            dir,
            &[
                public(CERT_FILE, &self.cert_pem),
                secret(KEY_FILE, &key),
                public(CHAIN_FILE, &self.chain_pem),
                public(ROOTS_FILE, &self.roots_pem),
            ],
        )
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The trust anchors (PEM).
    pub fn roots_pem(&self) -> &str {
        &self.roots_pem
    }

    /// An intermediate for `datacenter`, signed by this authority.
    pub fn intermediate(&self, datacenter: &str) -> Result<Authority, CaError> {
        let key = KeyPair::generate().map_err(cert_err("generating the intermediate key"))?;
        let params = ca_params(
            &format!(
                "meshgate intermediate CA {datacenter} {}",
                self.trust_domain
            ),
            &self.trust_domain,
            INTERMEDIATE_LIFETIME,
        )?;
        let cert = params
            .signed_by(&key, &self.issuer, &self.key)
            .map_err(cert_err("signing the intermediate"))?;
        let cert_pem = cert.pem();
        Ok(Authority {
            trust_domain: self.trust_domain.clone(),
            issuer: cert,
            key,
            cert_pem,
            chain_pem: self.own_chain(),
            roots_pem: self.roots_pem.clone(),
        })
    }

    /// This authority's certificate and the intermediates above it, unless it is a root.
    fn own_chain(&self) -> String {
        if self.cert_pem == self.roots_pem {
            String::new()
        } else {
            format!("{}{}", self.cert_pem, self.chain_pem)
        }
    }

    /// A service leaf: SPIFFE URI SAN, client and server authentication.
    pub fn issue(&self, req: &LeafRequest) -> Result<Leaf, CaError> {
        if !(MIN_LEAF_LIFETIME..=MAX_LEAF_LIFETIME).contains(&req.lifetime) {
            return Err(CaError::Lifetime {
                lifetime: req.lifetime,
            });
        }
        let identity = ServiceIdentity {
            trust_domain: self.trust_domain.clone(),
            namespace: req.namespace.clone(),
            datacenter: req.datacenter.clone(),
            service: req.service.clone(),
        };
        if meshgate_mesh::names::parse_spiffe_id(&identity.uri()).is_none() {
            return Err(CaError::Invalid(format!(
                "{} is not a valid service identity",
                identity.uri()
            )));
        }
        let key = KeyPair::generate().map_err(cert_err("generating the leaf key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, req.service.as_str());
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(
            identity
                .uri()
                .try_into()
                .map_err(cert_err("service identity URI"))?,
        )];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::KeyAgreement,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, req.lifetime)?;
        let cert = params
            .signed_by(&key, &self.issuer, &self.key)
            .map_err(cert_err("signing the leaf"))?;
        Ok(Leaf {
            cert_pem: format!("{}{}", cert.pem(), self.own_chain()),
            key_pem: key.serialize_pem(),
            roots_pem: self.roots_pem.clone(),
            identity,
        })
    }
}

impl Leaf {
    /// Writes `cert.pem`, `key.pem` (0600) and `roots.pem` into `dir` (see [`files`]).
    pub fn save(&self, dir: &Path) -> Result<(), CaError> {
        files::write_files(
            dir,
            &[
                public(CERT_FILE, &self.cert_pem),
                secret(KEY_FILE, &self.key_pem),
                public(ROOTS_FILE, &self.roots_pem),
            ],
        )
    }
}

fn public<'a>(name: &'a str, text: &'a str) -> files::FileSpec<'a> {
    files::FileSpec {
        name,
        text,
        secret: false,
    }
}

fn secret<'a>(name: &'a str, text: &'a str) -> files::FileSpec<'a> {
    files::FileSpec {
        name,
        text,
        secret: true,
    }
}
