//! How things ended, as typed values whose labels are the metric labels: a ClientHello's outcome
//! ([`HelloOutcome`]) and a connection's end ([`End`]). Every label comes from one exhaustive `match`, so a
//! new variant cannot go uncounted or unlabelled.

use meshgate_sni::Reject;

/// How reading a ClientHello ended; the `outcome` label of `meshgate_client_hello_total`. The rejection
/// labels are [`Reject::label`]'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HelloOutcome {
    /// A complete hello with a server name.
    Ok,
    /// A complete hello without a server name.
    NoSni,
    /// No complete hello within the hello timeout.
    Timeout,
    /// The client closed (or the socket failed) before a complete hello.
    Eof,
    /// Not a TLS handshake record.
    NotTls,
    /// An SSL 2.0-style hello.
    Sslv2,
    /// Nothing newer than SSL 3.0 offered.
    Ssl3,
    /// The first handshake message is not a ClientHello.
    NotClientHello,
    /// Larger than the configured cap.
    TooLarge,
    /// Spread over too many records.
    TooManyRecords,
    /// Inconsistent lengths, records or extensions.
    Malformed,
    /// More than one `host_name`.
    MultipleHostNames,
    /// The `host_name` is not a valid DNS name.
    InvalidHostName,
}

impl HelloOutcome {
    /// Every outcome, in label order (the order of the scrape).
    pub const ALL: [HelloOutcome; 13] = [
        HelloOutcome::Ok,
        HelloOutcome::NoSni,
        HelloOutcome::Timeout,
        HelloOutcome::Eof,
        HelloOutcome::NotTls,
        HelloOutcome::Sslv2,
        HelloOutcome::Ssl3,
        HelloOutcome::NotClientHello,
        HelloOutcome::TooLarge,
        HelloOutcome::TooManyRecords,
        HelloOutcome::Malformed,
        HelloOutcome::MultipleHostNames,
        HelloOutcome::InvalidHostName,
    ];

    /// The outcome of a complete hello.
    pub fn complete(has_sni: bool) -> HelloOutcome {
        if has_sni {
            HelloOutcome::Ok
        } else {
            HelloOutcome::NoSni
        }
    }

    /// The outcome of a refused hello.
    pub fn rejected(reject: &Reject) -> HelloOutcome {
        match reject {
            Reject::NotTls => HelloOutcome::NotTls,
            Reject::Sslv2 => HelloOutcome::Sslv2,
            Reject::Ssl3 => HelloOutcome::Ssl3,
            Reject::NotClientHello => HelloOutcome::NotClientHello,
            Reject::TooLarge { .. } => HelloOutcome::TooLarge,
            Reject::TooManyRecords => HelloOutcome::TooManyRecords,
            Reject::Malformed(_) => HelloOutcome::Malformed,
            Reject::MultipleHostNames => HelloOutcome::MultipleHostNames,
            Reject::InvalidHostName(_) => HelloOutcome::InvalidHostName,
        }
    }

    /// Position in [`HelloOutcome::ALL`] (and in [`super::CoreStats::hello`]).
    pub const fn index(self) -> usize {
        match self {
            HelloOutcome::Ok => 0,
            HelloOutcome::NoSni => 1,
            HelloOutcome::Timeout => 2,
            HelloOutcome::Eof => 3,
            HelloOutcome::NotTls => 4,
            HelloOutcome::Sslv2 => 5,
            HelloOutcome::Ssl3 => 6,
            HelloOutcome::NotClientHello => 7,
            HelloOutcome::TooLarge => 8,
            HelloOutcome::TooManyRecords => 9,
            HelloOutcome::Malformed => 10,
            HelloOutcome::MultipleHostNames => 11,
            HelloOutcome::InvalidHostName => 12,
        }
    }

    /// Stable label.
    pub const fn label(self) -> &'static str {
        match self {
            HelloOutcome::Ok => "ok",
            HelloOutcome::NoSni => "no_sni",
            HelloOutcome::Timeout => "timeout",
            HelloOutcome::Eof => "eof",
            HelloOutcome::NotTls => "not_tls",
            HelloOutcome::Sslv2 => "sslv2",
            HelloOutcome::Ssl3 => "ssl3",
            HelloOutcome::NotClientHello => "not_client_hello",
            HelloOutcome::TooLarge => "too_large",
            HelloOutcome::TooManyRecords => "too_many_records",
            HelloOutcome::Malformed => "malformed",
            HelloOutcome::MultipleHostNames => "multiple_host_names",
            HelloOutcome::InvalidHostName => "invalid_host_name",
        }
    }
}

/// The `outcome` label values of [`HelloOutcome::ALL`], in order (kept for callers that want strings).
pub const HELLO_OUTCOMES: [&str; 13] = {
    let mut labels = [""; 13];
    let mut i = 0;
    while i < HelloOutcome::ALL.len() {
        labels[i] = HelloOutcome::ALL[i].label();
        i += 1;
    }
    labels
};

/// How a connection ended; `reason` label values of `meshgate_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both directions finished with FIN.
    Completed,
    /// The ClientHello was refused or never completed.
    HelloFailed,
    /// No route for the name (or no SNI and no no-SNI route).
    NoRoute,
    /// Every endpoint of every group failed.
    UpstreamUnavailable,
    /// The downstream client reset or errored.
    DownstreamError,
    /// The upstream reset or errored.
    UpstreamError,
    /// Idle timeout.
    IdleTimeout,
    /// Maximum connection duration.
    MaxDuration,
    /// Refused by the connection hook.
    Denied,
}

impl End {
    /// Every variant, in label order.
    pub const ALL: [End; 9] = [
        End::Completed,
        End::HelloFailed,
        End::NoRoute,
        End::UpstreamUnavailable,
        End::DownstreamError,
        End::UpstreamError,
        End::IdleTimeout,
        End::MaxDuration,
        End::Denied,
    ];

    /// Position in [`End::ALL`] (and in [`super::CoreStats::ended`]).
    pub const fn index(self) -> usize {
        match self {
            End::Completed => 0,
            End::HelloFailed => 1,
            End::NoRoute => 2,
            End::UpstreamUnavailable => 3,
            End::DownstreamError => 4,
            End::UpstreamError => 5,
            End::IdleTimeout => 6,
            End::MaxDuration => 7,
            End::Denied => 8,
        }
    }

    /// Stable label.
    pub const fn label(self) -> &'static str {
        match self {
            End::Completed => "completed",
            End::HelloFailed => "hello_failed",
            End::NoRoute => "no_route",
            End::UpstreamUnavailable => "upstream_unavailable",
            End::DownstreamError => "downstream_error",
            End::UpstreamError => "upstream_error",
            End::IdleTimeout => "idle_timeout",
            End::MaxDuration => "max_duration",
            End::Denied => "denied",
        }
    }
}
