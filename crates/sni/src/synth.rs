//! Builds ClientHellos byte by byte, and re-splits them into TLS records.
//!
//! For tests, benchmarks and fuzz seeds: shapes that real captures don't cover (multi-record hellos,
//! post-quantum-sized key shares, two host names, SSL 3.0) are made here from a plain description. The
//! output is a well-formed TLS 1.3 ClientHello unless the spec asks for something else.

/// Named group X25519MLKEM768 (draft-kwiatkowski-tls-ecdhe-mlkem); its key share is 1216 bytes.
pub const GROUP_X25519_MLKEM768: u16 = 0x11ec;
/// Named group x25519; its key share is 32 bytes.
pub const GROUP_X25519: u16 = 0x001d;

/// A description of a ClientHello to build.
#[derive(Debug, Clone)]
pub struct HelloSpec {
    sni: Option<String>,
    extra_host_names: Vec<String>,
    alpn: Vec<String>,
    legacy_version: u16,
    supported_versions: Vec<u16>,
    key_shares: Vec<(u16, usize)>,
    padding: usize,
    raw_extensions: Vec<(u16, Vec<u8>)>,
}

impl HelloSpec {
    /// A TLS 1.3 hello with an x25519 key share and the given server name.
    pub fn new(sni: Option<&str>) -> Self {
        Self {
            sni: sni.map(str::to_owned),
            extra_host_names: Vec::new(),
            alpn: Vec::new(),
            legacy_version: 0x0303,
            supported_versions: vec![0x0304, 0x0303],
            key_shares: vec![(GROUP_X25519, 32)],
            padding: 0,
            raw_extensions: Vec::new(),
        }
    }

    /// Offer these ALPN protocols.
    pub fn alpn(mut self, protocols: &[&str]) -> Self {
        self.alpn = protocols.iter().map(|p| (*p).to_owned()).collect();
        self
    }

    /// Set `legacy_version`.
    pub fn legacy_version(mut self, v: u16) -> Self {
        self.legacy_version = v;
        self
    }

    /// Set the `supported_versions` list; an empty list omits the extension.
    pub fn supported_versions(mut self, v: &[u16]) -> Self {
        self.supported_versions = v.to_vec();
        self
    }

    /// Add a post-quantum hybrid key share (X25519MLKEM768, 1216 bytes), as current browsers send.
    pub fn post_quantum(mut self) -> Self {
        self.key_shares.insert(0, (GROUP_X25519_MLKEM768, 1216));
        self
    }

    /// Add a padding extension (RFC 7685) of `n` bytes.
    pub fn padding(mut self, n: usize) -> Self {
        self.padding = n;
        self
    }

    /// A second `host_name` entry in `server_name` (which a reader must refuse).
    pub fn extra_host_name(mut self, name: &str) -> Self {
        self.extra_host_names.push(name.to_owned());
        self
    }

    /// Append an extension verbatim.
    pub fn raw_extension(mut self, kind: u16, body: &[u8]) -> Self {
        self.raw_extensions.push((kind, body.to_vec()));
        self
    }

    /// The ClientHello as one TLS record.
    pub fn build(&self) -> Vec<u8> {
        let body = self.body();
        let mut handshake = vec![1];
        push_u24(&mut handshake, body.len());
        handshake.extend_from_slice(&body);
        records(&handshake, &[])
    }

    /// The ClientHello handshake message alone (no record framing).
    fn body(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(512);
        b.extend_from_slice(&self.legacy_version.to_be_bytes());
        b.extend((0u8..32).map(|i| i.wrapping_mul(7))); // random
        b.push(32); // session id (middlebox compatibility mode)
        b.extend((0u8..32).map(|i| i.wrapping_mul(13)));
        let suites: [u16; 4] = [0x1301, 0x1302, 0x1303, 0xc02f];
        push_u16(&mut b, suites.len() * 2);
        for s in suites {
            b.extend_from_slice(&s.to_be_bytes());
        }
        b.extend_from_slice(&[1, 0]); // compression: null
        let ext = self.extensions();
        push_u16(&mut b, ext.len());
        b.extend_from_slice(&ext);
        b
    }

    fn extensions(&self) -> Vec<u8> {
        let mut e = Vec::new();
        if let Some(sni) = &self.sni {
            let mut names = Vec::new();
            for name in std::iter::once(sni).chain(&self.extra_host_names) {
                names.push(0);
                push_u16(&mut names, name.len());
                names.extend_from_slice(name.as_bytes());
            }
            let mut body = Vec::new();
            push_u16(&mut body, names.len());
            body.extend_from_slice(&names);
            push_ext(&mut e, 0, &body);
        }
        push_ext(&mut e, 10, &[0, 4, 0x00, 0x1d, 0x00, 0x17]); // supported_groups
        push_ext(&mut e, 13, &[0, 4, 0x08, 0x04, 0x04, 0x03]); // signature_algorithms
        if !self.alpn.is_empty() {
            let mut list = Vec::new();
            for p in &self.alpn {
                // ALPN names are at most 255 bytes; longer ones are cut to keep the output well-formed.
                let p = &p.as_bytes()[..p.len().min(255)];
                list.push(p.len() as u8);
                list.extend_from_slice(p);
            }
            let mut body = Vec::new();
            push_u16(&mut body, list.len());
            body.extend_from_slice(&list);
            push_ext(&mut e, 16, &body);
        }
        if !self.supported_versions.is_empty() {
            let mut body = vec![(self.supported_versions.len() * 2) as u8];
            for v in &self.supported_versions {
                body.extend_from_slice(&v.to_be_bytes());
            }
            push_ext(&mut e, 43, &body);
        }
        let mut shares = Vec::new();
        for (group, len) in &self.key_shares {
            shares.extend_from_slice(&group.to_be_bytes());
            push_u16(&mut shares, *len);
            shares.extend((0..*len).map(|i| (i % 251) as u8));
        }
        let mut body = Vec::new();
        push_u16(&mut body, shares.len());
        body.extend_from_slice(&shares);
        push_ext(&mut e, 51, &body); // key_share
        for (kind, body) in &self.raw_extensions {
            push_ext(&mut e, *kind, body);
        }
        if self.padding > 0 {
            push_ext(&mut e, 21, &vec![0; self.padding]);
        }
        e
    }
}

/// Frames a handshake byte string into records: one record per size in `sizes` (in order), then records
/// of at most 2^14 bytes for whatever is left.
fn records(handshake: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::with_capacity(handshake.len() + 5 * (sizes.len() + 2));
    let mut rest = handshake;
    let mut sizes = sizes.iter().copied();
    while !rest.is_empty() {
        let n = sizes
            .next()
            .unwrap_or(crate::MAX_RECORD_PAYLOAD)
            .clamp(1, crate::MAX_RECORD_PAYLOAD)
            .min(rest.len());
        out.extend_from_slice(&[22, 3, 1]);
        push_u16(&mut out, n);
        out.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
    }
    out
}

/// Re-splits the handshake bytes carried by a run of TLS handshake records into records of the given
/// sizes (then 2^14-byte records). Returns `None` if `bytes` is not a run of handshake records.
pub fn refragment(bytes: &[u8], sizes: &[usize]) -> Option<Vec<u8>> {
    let mut handshake = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    while !rest.is_empty() {
        if rest.len() < 5 || rest[0] != 22 {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        handshake.extend_from_slice(rest.get(5..5 + len)?);
        rest = &rest[5 + len..];
    }
    Some(records(&handshake, sizes))
}

fn push_u16(out: &mut Vec<u8>, v: usize) {
    // Lengths built here are bounded by the spec sizes; saturate rather than wrap on absurd inputs.
    out.extend_from_slice(&u16::try_from(v).unwrap_or(u16::MAX).to_be_bytes());
}

fn push_u24(out: &mut Vec<u8>, v: usize) {
    let v = v.min(0xff_ffff);
    out.extend_from_slice(&[(v >> 16) as u8, (v >> 8) as u8, v as u8]);
}

fn push_ext(out: &mut Vec<u8>, kind: u16, body: &[u8]) {
    out.extend_from_slice(&kind.to_be_bytes());
    push_u16(out, body.len());
    out.extend_from_slice(body);
}
