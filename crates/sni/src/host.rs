//! DNS host-name validation and normalisation for SNI values.
//!
//! A name is checked once, here, and normalised once (ASCII lowercase, one trailing dot dropped), so that
//! the route table and the metrics only ever see canonical names.

use thiserror::Error;

/// Longest host name, in bytes, without the trailing dot (RFC 1035 §2.3.4).
pub const MAX_HOST_NAME: usize = 253;

/// Longest DNS label, in bytes (RFC 1035 §2.3.4).
pub const MAX_LABEL: usize = 63;

/// Why a server name is not an acceptable host name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum HostNameError {
    /// The name has no bytes (or only a dot).
    #[error("empty host name")]
    Empty,
    /// The name is longer than 253 bytes.
    #[error("host name longer than {MAX_HOST_NAME} bytes")]
    TooLong,
    /// Two dots in a row, or a leading dot.
    #[error("empty label in host name")]
    EmptyLabel,
    /// A label longer than 63 bytes.
    #[error("label longer than {MAX_LABEL} bytes")]
    LabelTooLong,
    /// A byte other than a letter, digit, hyphen or underscore (this excludes `[`, `:` and all non-ASCII).
    #[error("invalid character in host name")]
    InvalidCharacter,
    /// The name is an IPv4 address literal; SNI must name a host (RFC 6066 §3).
    #[error("IP address literal instead of a host name")]
    IpLiteral,
}

/// Checks that `name` is a DNS host name and returns its canonical form: ASCII lowercase, without one
/// trailing dot. Underscores are accepted because service names in meshes use them.
pub fn normalize_host_name(name: &[u8]) -> Result<String, HostNameError> {
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() {
        return Err(HostNameError::Empty);
    }
    if name.len() > MAX_HOST_NAME {
        return Err(HostNameError::TooLong);
    }
    let mut all_numeric = true;
    for label in name.split(|&b| b == b'.') {
        if label.is_empty() {
            return Err(HostNameError::EmptyLabel);
        }
        if label.len() > MAX_LABEL {
            return Err(HostNameError::LabelTooLong);
        }
        if !label
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(HostNameError::InvalidCharacter);
        }
        all_numeric &= label.iter().all(u8::is_ascii_digit);
    }
    // Every byte is ASCII now, so the conversion cannot fail; the check keeps it panic-free regardless.
    let text = std::str::from_utf8(name).map_err(|_| HostNameError::InvalidCharacter)?;
    if all_numeric || text.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err(HostNameError::IpLiteral);
    }
    Ok(text.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_normalises() {
        assert_eq!(
            normalize_host_name(b"API.Default.dc1.internal.X.consul.").as_deref(),
            Ok("api.default.dc1.internal.x.consul")
        );
        assert_eq!(
            normalize_host_name(b"_grpc.svc-1").as_deref(),
            Ok("_grpc.svc-1")
        );
        assert_eq!(
            normalize_host_name(b"localhost").as_deref(),
            Ok("localhost")
        );
        assert_eq!(
            normalize_host_name(b"1a.example").as_deref(),
            Ok("1a.example")
        );
    }

    #[test]
    fn rejects() {
        use HostNameError::*;
        let cases: &[(&[u8], HostNameError)] = &[
            (b"", Empty),
            (b".", Empty),
            (b"a..b", EmptyLabel),
            (b".a", EmptyLabel),
            (b"a.b..", EmptyLabel),
            (b"10.0.0.1", IpLiteral),
            (b"10.0.0.1.", IpLiteral),
            (b"123", IpLiteral),
            (b"[::1]", InvalidCharacter),
            (b"::1", InvalidCharacter),
            (b"a b", InvalidCharacter),
            (b"caf\xc3\xa9", InvalidCharacter),
            (b"a/b", InvalidCharacter),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_host_name(input), Err(*want), "{input:?}");
        }
        let long_label = vec![b'a'; 64];
        assert_eq!(normalize_host_name(&long_label), Err(LabelTooLong));
        let mut long = Vec::new();
        while long.len() < 254 {
            long.extend_from_slice(b"abcdefgh.");
        }
        long.truncate(254);
        assert_eq!(normalize_host_name(&long), Err(TooLong));
        // 253 bytes plus a trailing dot is still fine.
        let mut ok = vec![b'a'; 63];
        for _ in 0..3 {
            ok.push(b'.');
            ok.extend(std::iter::repeat_n(b'b', 62));
        }
        assert_eq!(ok.len(), 252);
        ok.extend_from_slice(b"c.");
        assert!(normalize_host_name(&ok).is_ok());
    }
}
