//! The incremental ClientHello reader: TLS record reassembly, handshake defragmentation and extraction of
//! the fields a gateway routes on.

use crate::host::{normalize_host_name, HostNameError};
use crate::{
    DEFAULT_MAX_HELLO_BYTES, MAX_HELLO_BYTES_LIMIT, MAX_HELLO_RECORDS, MAX_RECORD_PAYLOAD,
};
use thiserror::Error;
use tls_parser::{TlsExtension, TlsMessageHandshake};

/// TLS record header: content type (1), legacy version (2), length (2).
const RECORD_HEADER: usize = 5;
/// Handshake message header: type (1), length (3).
const HANDSHAKE_HEADER: usize = 4;
const CONTENT_TYPE_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const EXT_SUPPORTED_VERSIONS: u16 = 43;
/// `server_name` list entry type for a DNS host name (RFC 6066 §3).
const NAME_TYPE_HOST_NAME: u8 = 0;
const SSL3: u16 = 0x0300;

/// Limits applied while reading a ClientHello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest ClientHello handshake message accepted (header included), in bytes.
    pub max_hello_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_hello_bytes: DEFAULT_MAX_HELLO_BYTES,
        }
    }
}

impl Limits {
    /// Limits with the given hello cap, clamped to [`MAX_HELLO_BYTES_LIMIT`].
    pub fn with_max_hello_bytes(max: usize) -> Self {
        Self {
            max_hello_bytes: max.clamp(HANDSHAKE_HEADER, MAX_HELLO_BYTES_LIMIT),
        }
    }
}

/// Why a connection's first bytes are not an acceptable ClientHello. Each variant is a stable metrics label
/// (see [`Reject::label`]). Deliberately exhaustive: the engine counts each variant under its own label,
/// so a new reason must fail to compile there until it is counted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Reject {
    /// The first byte is not a TLS handshake record (plain HTTP, SSH, random bytes...).
    #[error("not TLS: first record is not a handshake record")]
    NotTls,
    /// An SSL 2.0-style ClientHello (two-byte header with the high bit set).
    #[error("SSLv2-style ClientHello")]
    Sslv2,
    /// The client offers nothing newer than SSL 3.0.
    #[error("SSL 3.0 ClientHello")]
    Ssl3,
    /// The first handshake message is not a ClientHello.
    #[error("first handshake message is not a ClientHello")]
    NotClientHello,
    /// The ClientHello is larger than the configured cap.
    #[error("ClientHello of {size} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// Declared size of the handshake message, header included.
        size: usize,
        /// The cap in force.
        limit: usize,
    },
    /// The hello spans more records than [`MAX_HELLO_RECORDS`].
    #[error("ClientHello spans more than {MAX_HELLO_RECORDS} records")]
    TooManyRecords,
    /// A length field, a record or an extension is inconsistent.
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
    /// The `server_name` extension lists more than one `host_name`.
    #[error("more than one host_name in server_name")]
    MultipleHostNames,
    /// The `host_name` is not a valid DNS host name.
    #[error("invalid server name: {0}")]
    InvalidHostName(HostNameError),
}

impl Reject {
    /// A short, stable label for metrics (`reason="..."`): never the message text.
    pub fn label(&self) -> &'static str {
        match self {
            Reject::NotTls => "not_tls",
            Reject::Sslv2 => "sslv2",
            Reject::Ssl3 => "ssl3",
            Reject::NotClientHello => "not_client_hello",
            Reject::TooLarge { .. } => "too_large",
            Reject::TooManyRecords => "too_many_records",
            Reject::Malformed(_) => "malformed",
            Reject::MultipleHostNames => "multiple_host_names",
            Reject::InvalidHostName(_) => "invalid_host_name",
        }
    }
}

/// What a gateway learns from a ClientHello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The normalised server name, or `None` when the client sent no `server_name` extension.
    pub sni: Option<String>,
    /// ALPN protocol names in the client's order (empty without the extension).
    pub alpn: Vec<Vec<u8>>,
    /// `legacy_version` of the ClientHello body (0x0303 for TLS 1.2 and 1.3 clients).
    pub legacy_version: u16,
    /// The `supported_versions` list (empty without the extension).
    pub supported_versions: Vec<u16>,
    /// Size of the ClientHello handshake message, header included, in bytes.
    pub size: usize,
    /// How many TLS records carried it.
    pub records: usize,
    /// Bytes of the stream consumed up to the end of the last record holding the hello.
    pub consumed: usize,
}

impl ClientHello {
    /// The ALPN protocols as text, lossy, joined by commas (for logs).
    pub fn alpn_display(&self) -> String {
        let mut out = String::new();
        for (i, p) in self.alpn.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&String::from_utf8_lossy(p));
        }
        out
    }
}

/// Result of feeding bytes to a [`HelloReader`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The hello is not complete yet; feed more bytes.
    NeedMore,
    /// The whole ClientHello was read.
    Done(ClientHello),
}

/// Reads a ClientHello from bytes fed in any split.
///
/// The reader keeps every byte it was fed ([`HelloReader::buffered`]) so that the caller can forward them
/// verbatim once it has decided where the connection goes. After an answer (done or rejected) further feeds
/// return the same answer's kind without reading.
#[derive(Debug)]
pub struct HelloReader {
    limits: Limits,
    /// Every byte fed so far.
    raw: Vec<u8>,
    /// Offset in `raw` of the next record header not yet consumed.
    next_record: usize,
    /// Handshake bytes reassembled from the records so far.
    handshake: Vec<u8>,
    records: usize,
    finished: bool,
}

impl HelloReader {
    /// A reader with the given limits.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            raw: Vec::new(),
            next_record: 0,
            handshake: Vec::new(),
            records: 0,
            finished: false,
        }
    }

    /// Every byte fed so far, in order: what must be forwarded upstream first.
    pub fn buffered(&self) -> &[u8] {
        &self.raw
    }

    /// Takes the buffered bytes, leaving the reader empty.
    pub fn into_buffered(self) -> Vec<u8> {
        self.raw
    }

    /// Feeds the next bytes of the stream.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Progress, Reject> {
        if self.finished {
            return Err(Reject::Malformed("reader already finished"));
        }
        self.raw.extend_from_slice(bytes);
        let result = self.advance();
        if !matches!(result, Ok(Progress::NeedMore)) {
            self.finished = true;
        }
        result
    }

    fn advance(&mut self) -> Result<Progress, Reject> {
        // The very first bytes tell TLS apart from everything else before a whole header is in.
        if self.next_record == 0 {
            check_first_bytes(&self.raw)?;
        }
        loop {
            let rest = &self.raw[self.next_record..];
            if rest.len() < RECORD_HEADER {
                return Ok(Progress::NeedMore);
            }
            if rest[0] != CONTENT_TYPE_HANDSHAKE {
                // A later record of another type before the hello is complete.
                return Err(if self.records == 0 {
                    Reject::NotTls
                } else {
                    Reject::Malformed("non-handshake record inside the ClientHello")
                });
            }
            if rest[1] != 3 {
                return Err(Reject::NotTls);
            }
            let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
            if len > MAX_RECORD_PAYLOAD {
                return Err(Reject::Malformed("record longer than 2^14 bytes"));
            }
            if len == 0 {
                // RFC 8446 §5.1: zero-length handshake fragments must not be sent.
                return Err(Reject::Malformed("empty handshake record"));
            }
            if rest.len() < RECORD_HEADER + len {
                // Reject an oversized hello as soon as its header is visible, before buffering it all.
                self.check_declared_size(&rest[RECORD_HEADER..])?;
                return Ok(Progress::NeedMore);
            }
            self.records += 1;
            if self.records > MAX_HELLO_RECORDS {
                return Err(Reject::TooManyRecords);
            }
            let fragment = &rest[RECORD_HEADER..RECORD_HEADER + len];
            self.handshake.extend_from_slice(fragment);
            self.next_record += RECORD_HEADER + len;
            if let Some(total) = self.handshake_size()? {
                if self.handshake.len() > total {
                    // RFC 8446 §5.1: nothing may follow the ClientHello in its last record.
                    return Err(Reject::Malformed(
                        "data after the ClientHello in its record",
                    ));
                }
                if self.handshake.len() == total {
                    let mut hello = parse_client_hello(&self.handshake[HANDSHAKE_HEADER..])?;
                    hello.size = total;
                    hello.records = self.records;
                    hello.consumed = self.next_record;
                    return Ok(Progress::Done(hello));
                }
            }
        }
    }

    /// Looks at a handshake header, possibly spread over the reassembled bytes and a partial record.
    fn check_declared_size(&self, partial: &[u8]) -> Result<(), Reject> {
        let mut header = [0u8; HANDSHAKE_HEADER];
        let have = self.handshake.len();
        if have >= HANDSHAKE_HEADER {
            return Ok(()); // already checked when the header completed
        }
        let need = HANDSHAKE_HEADER - have;
        if partial.len() < need {
            return Ok(());
        }
        header[..have].copy_from_slice(&self.handshake);
        header[have..].copy_from_slice(&partial[..need]);
        self.check_header(&header).map(|_| ())
    }

    /// The declared total size of the hello, once its header has been reassembled.
    fn handshake_size(&self) -> Result<Option<usize>, Reject> {
        match self.handshake.get(..HANDSHAKE_HEADER) {
            Some(header) => self.check_header(header).map(Some),
            None => Ok(None),
        }
    }

    fn check_header(&self, header: &[u8]) -> Result<usize, Reject> {
        if header[0] != HANDSHAKE_CLIENT_HELLO {
            return Err(Reject::NotClientHello);
        }
        let body =
            usize::from(header[1]) << 16 | usize::from(header[2]) << 8 | usize::from(header[3]);
        let size = HANDSHAKE_HEADER + body;
        if size > self.limits.max_hello_bytes {
            return Err(Reject::TooLarge {
                size,
                limit: self.limits.max_hello_bytes,
            });
        }
        Ok(size)
    }
}

/// Classifies the first one or two bytes of a connection.
fn check_first_bytes(raw: &[u8]) -> Result<(), Reject> {
    match raw.first() {
        None => Ok(()),
        Some(&CONTENT_TYPE_HANDSHAKE) => match raw.get(1) {
            None | Some(3) => Ok(()),
            Some(_) => Err(Reject::NotTls),
        },
        // SSLv2 record header: high bit set, then the message type 1 (CLIENT-HELLO) in the third byte.
        Some(&b) if b & 0x80 != 0 => match raw.get(2) {
            None | Some(1) => {
                if raw.len() < 3 {
                    Ok(())
                } else {
                    Err(Reject::Sslv2)
                }
            }
            Some(_) => Err(Reject::NotTls),
        },
        Some(_) => Err(Reject::NotTls),
    }
}

/// Parses a ClientHello body (after the 4-byte handshake header).
fn parse_client_hello(body: &[u8]) -> Result<ClientHello, Reject> {
    let (rest, msg) = tls_parser::parse_tls_handshake_msg_client_hello(body)
        .map_err(|_| Reject::Malformed("ClientHello body"))?;
    let TlsMessageHandshake::ClientHello(contents) = msg else {
        return Err(Reject::NotClientHello);
    };
    let mut hello = ClientHello {
        sni: None,
        alpn: Vec::new(),
        legacy_version: contents.version.0,
        supported_versions: Vec::new(),
        size: 0,
        records: 0,
        consumed: 0,
    };
    if hello.legacy_version >> 8 != 3 {
        return Err(Reject::Malformed("ClientHello version"));
    }
    // tls-parser accepts trailing bytes after the extensions block; a real hello has none.
    let ext = match contents.ext {
        Some(ext) if rest.is_empty() => ext,
        Some(_) => return Err(Reject::Malformed("bytes after the extensions")),
        None if rest.is_empty() => &[][..],
        None => return Err(Reject::Malformed("bytes after the compression methods")),
    };
    read_extensions(ext, &mut hello)?;
    let offers_newer = hello.supported_versions.iter().any(|&v| v > SSL3);
    if hello.legacy_version <= SSL3 && !offers_newer {
        return Err(Reject::Ssl3);
    }
    Ok(hello)
}

/// Extension types seen in one hello: a short list, then a bit per possible type.
#[derive(Default)]
struct SeenTypes {
    few: Vec<u16>,
    many: Option<Box<[u64; 1024]>>,
}

impl SeenTypes {
    /// Past this many types the list becomes a bit set.
    const FEW: usize = 32;

    /// Adds `kind`; false if it was there already.
    fn insert(&mut self, kind: u16) -> bool {
        if let Some(bits) = &mut self.many {
            let (word, bit) = (usize::from(kind / 64), 1u64 << (kind % 64));
            let fresh = bits[word] & bit == 0;
            bits[word] |= bit;
            return fresh;
        }
        if self.few.contains(&kind) {
            return false;
        }
        self.few.push(kind);
        if self.few.len() > Self::FEW {
            let mut bits = Box::new([0u64; 1024]);
            for k in self.few.drain(..) {
                bits[usize::from(k / 64)] |= 1u64 << (k % 64);
            }
            self.many = Some(bits);
        }
        true
    }
}

/// Walks the extensions block, refusing duplicates, and reads SNI, ALPN and supported versions.
fn read_extensions(mut ext: &[u8], hello: &mut ClientHello) -> Result<(), Reject> {
    // Extension types seen so far; hellos carry ~20, so a linear scan beats hashing — until a hostile
    // hello packs thousands of empty extensions, where the scan turns quadratic: past a few dozen,
    // a 64 Ki-bit set takes over.
    let mut seen = SeenTypes::default();
    while !ext.is_empty() {
        if ext.len() < 4 {
            return Err(Reject::Malformed("truncated extension header"));
        }
        let kind = u16::from_be_bytes([ext[0], ext[1]]);
        let len = usize::from(u16::from_be_bytes([ext[2], ext[3]]));
        let Some(one) = ext.get(..4 + len) else {
            return Err(Reject::Malformed("extension longer than its block"));
        };
        if !seen.insert(kind) {
            return Err(Reject::Malformed("duplicate extension"));
        }
        match kind {
            EXT_SERVER_NAME => hello.sni = read_server_name(&one[4..])?,
            EXT_ALPN => match tls_parser::parse_tls_extension(one) {
                Ok((_, TlsExtension::ALPN(list))) if !list.iter().any(|p| p.is_empty()) => {
                    hello.alpn = list.into_iter().map(<[u8]>::to_vec).collect();
                }
                _ => return Err(Reject::Malformed("ALPN extension")),
            },
            EXT_SUPPORTED_VERSIONS => match tls_parser::parse_tls_extension(one) {
                Ok((_, TlsExtension::SupportedVersions(list))) => {
                    hello.supported_versions = list.into_iter().map(|v| v.0).collect();
                }
                _ => return Err(Reject::Malformed("supported_versions extension")),
            },
            _ => {}
        }
        ext = &ext[4 + len..];
    }
    Ok(())
}

/// Reads the `server_name` extension body (RFC 6066 §3): a list of (type, name) with exactly one host name.
fn read_server_name(data: &[u8]) -> Result<Option<String>, Reject> {
    let (list_len, mut list) = match data {
        [a, b, rest @ ..] => (usize::from(u16::from_be_bytes([*a, *b])), rest),
        _ => return Err(Reject::Malformed("server_name extension")),
    };
    if list_len != list.len() || list.is_empty() {
        return Err(Reject::Malformed("server_name list length"));
    }
    let mut host = None;
    while !list.is_empty() {
        let [kind, a, b, rest @ ..] = list else {
            return Err(Reject::Malformed("server_name entry"));
        };
        let len = usize::from(u16::from_be_bytes([*a, *b]));
        let Some(name) = rest.get(..len) else {
            return Err(Reject::Malformed("server_name entry length"));
        };
        if *kind == NAME_TYPE_HOST_NAME {
            if host.is_some() {
                return Err(Reject::MultipleHostNames);
            }
            host = Some(normalize_host_name(name).map_err(Reject::InvalidHostName)?);
        }
        list = &rest[len..];
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{refragment, HelloSpec};

    fn read_all(bytes: &[u8]) -> Result<Progress, Reject> {
        HelloReader::new(Limits::default()).feed(bytes)
    }

    fn done(bytes: &[u8]) -> ClientHello {
        match read_all(bytes) {
            Ok(Progress::Done(h)) => h,
            other => panic!("expected a hello, got {other:?}"),
        }
    }

    #[test]
    fn reads_sni_alpn_versions() {
        let bytes = HelloSpec::new(Some("Web.Default.DC1.internal.td.consul."))
            .alpn(&["h2", "http/1.1"])
            .build();
        let h = done(&bytes);
        assert_eq!(h.sni.as_deref(), Some("web.default.dc1.internal.td.consul"));
        assert_eq!(h.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert_eq!(h.supported_versions, vec![0x0304, 0x0303]);
        assert_eq!(h.records, 1);
        assert_eq!(h.consumed, bytes.len());
        assert_eq!(h.size, bytes.len() - RECORD_HEADER);
    }

    #[test]
    fn missing_sni_is_its_own_outcome() {
        let h = done(&HelloSpec::new(None).build());
        assert_eq!(h.sni, None);
    }

    #[test]
    fn multi_record_hello() {
        let bytes = HelloSpec::new(Some("a.example")).padding(5000).build();
        let split = refragment(&bytes, &[1, 100, 4000]).expect("refragment");
        let h = done(&split);
        assert_eq!(h.records, 4);
        assert_eq!(h.sni.as_deref(), Some("a.example"));
        assert_eq!(h.consumed, split.len());
    }

    #[test]
    fn trailing_bytes_are_kept_not_consumed() {
        let mut bytes = HelloSpec::new(Some("a.example")).build();
        let hello_len = bytes.len();
        bytes.extend_from_slice(&[23, 3, 3, 0, 1, 0]);
        let mut reader = HelloReader::new(Limits::default());
        let Ok(Progress::Done(h)) = reader.feed(&bytes) else {
            panic!("expected a hello")
        };
        assert_eq!(h.consumed, hello_len);
        assert_eq!(reader.buffered(), &bytes[..]);
    }

    #[test]
    fn rejects_non_tls() {
        assert_eq!(read_all(b"GET / HTTP/1.1\r\n\r\n"), Err(Reject::NotTls));
        assert_eq!(read_all(b"SSH-2.0-OpenSSH"), Err(Reject::NotTls));
        assert_eq!(read_all(&[22, 4, 0]), Err(Reject::NotTls));
        assert_eq!(read_all(&[22]), Ok(Progress::NeedMore));
    }

    #[test]
    fn rejects_sslv2() {
        assert_eq!(
            read_all(&[0x80, 0x2e, 0x01, 0x00, 0x02]),
            Err(Reject::Sslv2)
        );
        assert_eq!(read_all(&[0x80, 0x2e]), Ok(Progress::NeedMore));
    }

    #[test]
    fn rejects_ssl3() {
        let bytes = HelloSpec::new(Some("a.example"))
            .legacy_version(0x0300)
            .supported_versions(&[])
            .build();
        assert_eq!(read_all(&bytes), Err(Reject::Ssl3));
        // legacy 3.0 but offering TLS 1.3 is fine.
        let ok = HelloSpec::new(Some("a.example"))
            .legacy_version(0x0300)
            .build();
        assert!(matches!(read_all(&ok), Ok(Progress::Done(_))));
    }

    #[test]
    fn rejects_too_large_early() {
        let bytes = HelloSpec::new(Some("a.example")).padding(20_000).build();
        let split = refragment(&bytes, &[16_000]).expect("refragment");
        // The header alone is enough to refuse it.
        let mut reader = HelloReader::new(Limits::default());
        assert!(matches!(
            reader.feed(&split[..12]),
            Err(Reject::TooLarge { .. })
        ));
        // A raised limit accepts it.
        let mut big = HelloReader::new(Limits::with_max_hello_bytes(64 * 1024));
        assert!(matches!(big.feed(&split), Ok(Progress::Done(_))));
    }

    #[test]
    fn rejects_multiple_host_names() {
        let bytes = HelloSpec::new(Some("a.example"))
            .extra_host_name("b.example")
            .build();
        assert_eq!(read_all(&bytes), Err(Reject::MultipleHostNames));
    }

    #[test]
    fn rejects_bad_names() {
        for name in ["10.1.2.3", "[::1]", "a..b", "under score"] {
            let bytes = HelloSpec::new(Some(name)).build();
            assert!(
                matches!(read_all(&bytes), Err(Reject::InvalidHostName(_))),
                "{name}"
            );
        }
        let long = "a.".repeat(130);
        let bytes = HelloSpec::new(Some(&long)).build();
        assert!(matches!(read_all(&bytes), Err(Reject::InvalidHostName(_))));
    }

    #[test]
    fn duplicates_are_found_among_thousands_of_extensions() {
        // Past the short list, the bit set decides; a repeat far down the block is still refused.
        let mut spec = HelloSpec::new(Some("a.example"));
        for kind in 0x4000u16..0x4000 + 3000 {
            spec = spec.raw_extension(kind, &[]);
        }
        let distinct = spec.clone().build();
        assert!(read_all(&distinct).is_ok());
        let repeated = spec.raw_extension(0x4000 + 2999, &[]).build();
        assert_eq!(
            read_all(&repeated),
            Err(Reject::Malformed("duplicate extension"))
        );
    }

    #[test]
    fn seen_types_agree_with_a_set() {
        let mut seen = SeenTypes::default();
        let mut set = std::collections::HashSet::new();
        // A deterministic walk with repeats, crossing the switch from list to bit set.
        let mut x = 7u32;
        for _ in 0..500 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let kind = (x >> 16) as u16 % 97 + if x % 3 == 0 { 65_400 } else { 0 };
            assert_eq!(seen.insert(kind), set.insert(kind), "{kind}");
        }
    }

    #[test]
    fn rejects_duplicate_extension() {
        let bytes = HelloSpec::new(Some("a.example"))
            .raw_extension(EXT_ALPN, &[0, 3, 2, b'h', b'2'])
            .raw_extension(EXT_ALPN, &[0, 3, 2, b'h', b'2'])
            .build();
        assert_eq!(
            read_all(&bytes),
            Err(Reject::Malformed("duplicate extension"))
        );
    }

    #[test]
    fn rejects_other_handshake_and_malformed_lengths() {
        let mut bytes = HelloSpec::new(Some("a.example")).build();
        bytes[5] = 2; // ServerHello
        assert_eq!(read_all(&bytes), Err(Reject::NotClientHello));

        let mut bytes = HelloSpec::new(Some("a.example")).build();
        bytes[8] = bytes[8].wrapping_sub(1); // handshake shorter than the record
        assert!(matches!(read_all(&bytes), Err(Reject::Malformed(_))));

        assert!(matches!(
            read_all(&[22, 3, 1, 0, 0]),
            Err(Reject::Malformed("empty handshake record"))
        ));
        assert!(matches!(
            read_all(&[22, 3, 1, 0x40, 1]),
            Err(Reject::Malformed(_))
        ));
    }

    #[test]
    fn too_many_records() {
        let bytes = HelloSpec::new(Some("a.example")).padding(200).build();
        let sizes = vec![1usize; MAX_HELLO_RECORDS + 1];
        let split = refragment(&bytes, &sizes).expect("refragment");
        assert_eq!(read_all(&split), Err(Reject::TooManyRecords));
    }

    #[test]
    fn feed_after_answer_is_refused() {
        let mut reader = HelloReader::new(Limits::default());
        assert!(reader.feed(b"GET").is_err());
        assert!(reader.feed(b" /").is_err());
    }
}
