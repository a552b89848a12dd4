//! IO-free reader for the TLS ClientHello that opens every mesh connection.
//!
//! This crate owns the one piece of TLS a mesh gateway needs: finding out, from the first bytes a client
//! sends, which name it asked for (SNI) and which protocols it offers (ALPN), **without decrypting
//! anything**. It does no IO and keeps no clock: the caller feeds bytes as they arrive and gets one of three
//! answers — need more bytes, a [`ClientHello`], or a typed [`Reject`].
//!
//! Unlike readers that assume the ClientHello fits one TLS record, [`HelloReader`] reassembles a hello that
//! is split across TCP reads **and** across several TLS records (handshake fragmentation), as large
//! post-quantum hellos and some TLS stacks produce.
//!
//! ```
//! use meshgate_sni::{HelloReader, Limits, Progress};
//! let hello = meshgate_sni::synth::HelloSpec::new(Some("api.default.dc1.internal.x.consul")).build();
//! let mut reader = HelloReader::new(Limits::default());
//! let (first, rest) = hello.split_at(7);
//! assert!(matches!(reader.feed(first), Ok(Progress::NeedMore)));
//! match reader.feed(rest) {
//!     Ok(Progress::Done(h)) => assert_eq!(h.sni.as_deref(), Some("api.default.dc1.internal.x.consul")),
//!     other => panic!("unexpected {other:?}"),
//! }
//! ```
#![forbid(unsafe_code)]

mod host;
mod reader;
pub mod synth;

pub use host::{normalize_host_name, HostNameError};
pub use reader::{ClientHello, HelloReader, Limits, Progress, Reject};

/// Default cap on the ClientHello handshake message (header included), in bytes.
///
/// 16 KiB is Envoy's TLS inspector limit and comfortably fits today's post-quantum hellos (about 1.8 KB with
/// an X25519MLKEM768 key share); anything larger is almost certainly abuse.
pub const DEFAULT_MAX_HELLO_BYTES: usize = 16 * 1024;

/// Largest cap a configuration may set, in bytes: a handshake message length is 24 bits, but nothing a
/// real client sends comes near 64 KiB, and the gateway buffers the whole hello per connection.
pub const MAX_HELLO_BYTES_LIMIT: usize = 64 * 1024;

/// Largest TLS record payload a peer may send (RFC 8446 §5.1: 2^14 bytes).
pub const MAX_RECORD_PAYLOAD: usize = 16 * 1024;

/// Most TLS records one ClientHello may span.
///
/// Real stacks use one record, or a few when the hello outgrows 16 KiB or a middlebox-avoidance split is
/// configured; a cap keeps a peer from making us buffer megabytes of 1-byte records.
pub const MAX_HELLO_RECORDS: usize = 64;

/// Run the reader over a list of reads, as a fuzz target does: any input must end in an answer or "need
/// more", never a panic. Returns the final progress for the caller to inspect.
pub fn fuzz_reads(reads: &[&[u8]], limits: Limits) -> Result<Progress, Reject> {
    let mut reader = HelloReader::new(limits);
    let mut last = Ok(Progress::NeedMore);
    for read in reads {
        last = reader.feed(read);
        if !matches!(last, Ok(Progress::NeedMore)) {
            break;
        }
    }
    last
}

/// Splits one fuzz input into reads: the first byte gives the number of cuts (0–7), the next bytes give
/// each read's length; the remainder is the stream. A seed made of `[0]` plus a capture is one read.
pub fn split_fuzz_input(data: &[u8]) -> Vec<&[u8]> {
    let Some((&head, rest)) = data.split_first() else {
        return Vec::new();
    };
    let cuts = usize::from(head % 8).min(rest.len());
    let (sizes, mut stream) = rest.split_at(cuts);
    let mut reads = Vec::with_capacity(cuts + 1);
    for &size in sizes {
        let (read, tail) = stream.split_at(usize::from(size).min(stream.len()));
        reads.push(read);
        stream = tail;
    }
    reads.push(stream);
    reads
}
