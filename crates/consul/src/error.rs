//! The crate's one error type: every way a call to the Consul agent can fail, typed so a caller can
//! tell "retry later" (unreachable, timeout, 5xx) from "fix the configuration" (403, bad address).

use std::time::Duration;

/// A `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How much of an error body is kept: enough for Consul's one-line `text/plain` errors, bounded so a
/// misbehaving server cannot put megabytes into a log line.
pub const BODY_EXCERPT: usize = 512;

/// Everything that can go wrong talking to the agent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The agent configuration (address, TLS files, environment) is unusable.
    #[error("consul agent configuration: {0}")]
    Config(String),
    /// A request that would be unsafe to send (CR/LF or spaces in the path, control bytes in a query).
    #[error("refused to send request: {0}")]
    InvalidRequest(String),
    /// No TCP connection could be made to the agent.
    #[error("consul agent at {addr} unreachable: {source}")]
    Unreachable {
        /// `host:port` that was dialled.
        addr: String,
        /// The last connect error.
        #[source]
        source: std::io::Error,
    },
    /// The request's total deadline passed (connect, write, headers and body all count).
    #[error("{method} {path}: no complete answer within {after:?} (while {phase})")]
    Timeout {
        /// Request method.
        method: &'static str,
        /// Request path (without the query).
        path: String,
        /// What the client was doing when time ran out.
        phase: &'static str,
        /// The request's total budget.
        after: Duration,
    },
    /// The connection failed mid-request.
    #[error("{method} {path}: connection failed while {phase}: {source}")]
    Io {
        /// Request method.
        method: &'static str,
        /// Request path.
        path: String,
        /// What the client was doing.
        phase: &'static str,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// TLS set-up failed (CA file, client certificate, server name).
    #[error("consul TLS: {0}")]
    Tls(String),
    /// The answer is not well-formed HTTP/1.1.
    #[error("{method} {path}: malformed HTTP answer: {detail}")]
    Protocol {
        /// Request method.
        method: &'static str,
        /// Request path.
        path: String,
        /// What was wrong.
        detail: String,
    },
    /// The answer's body exceeds the configured cap.
    #[error("{method} {path}: answer body larger than {limit} bytes")]
    BodyTooLarge {
        /// Request method.
        method: &'static str,
        /// Request path.
        path: String,
        /// The cap.
        limit: usize,
    },
    /// The agent answered with a non-2xx status.
    #[error("{method} {path}: {}", status_message(*.status, .body))]
    Status {
        /// Request method.
        method: &'static str,
        /// Request path.
        path: String,
        /// HTTP status.
        status: u16,
        /// The start of the body (Consul's errors are one `text/plain` line), at most [`BODY_EXCERPT`] bytes.
        body: String,
    },
    /// A 2xx answer whose JSON does not have the expected shape.
    #[error("{path}: unexpected JSON: {source}")]
    Json {
        /// Request path.
        path: String,
        /// The decode error (line and column in the body).
        #[source]
        source: serde_json::Error,
    },
    /// `CONSUL_HTTP_TOKEN_FILE` could not be read.
    #[error("token file {path}: {source}")]
    TokenFile {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn status_message(status: u16, body: &str) -> String {
    match status {
        // Consul says what was refused ("Permission denied: Missing service:write on mesh-gateway");
        // an empty 403 body still means the token was refused.
        403 if body.is_empty() => {
            "403 permission denied by Consul (check the ACL token)".to_string()
        }
        403 => format!("403 refused by Consul's ACLs: {body} (check the ACL token's policies)"),
        _ => format!("HTTP {status}: {body}"),
    }
}

impl Error {
    /// The HTTP status, for [`Error::Status`].
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether retrying the same request later can succeed without a configuration change: the agent was
    /// unreachable, slow, restarting (5xx), or its answer was cut. 4xx and configuration errors are not.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unreachable { .. }
            | Error::Timeout { .. }
            | Error::Io { .. }
            | Error::Protocol { .. } => true,
            Error::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    /// For a 403, what Consul said it refused (`"service:write on mesh-gateway"`) when it said it.
    pub fn missing_permission(&self) -> Option<&str> {
        match self {
            Error::Status {
                status: 403, body, ..
            } => body
                .split_once("Missing ")
                .map(|(_, rest)| rest.lines().next().unwrap_or(rest).trim()),
            _ => None,
        }
    }
}

/// At most [`BODY_EXCERPT`] bytes of `body` as (lossy) text, trimmed.
pub(crate) fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(BODY_EXCERPT)]);
    text.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, body: &str) -> Error {
        Error::Status {
            method: "PUT",
            path: "/v1/agent/service/register".into(),
            status: code,
            body: body.into(),
        }
    }

    #[test]
    fn forbidden_names_what_was_refused() {
        let e = status(
            403,
            "Permission denied: Missing service:write on mesh-gateway",
        );
        assert_eq!(
            e.missing_permission(),
            Some("service:write on mesh-gateway")
        );
        let text = e.to_string();
        assert!(text.contains("403"), "{text}");
        assert!(text.contains("service:write on mesh-gateway"), "{text}");
        assert!(!e.is_transient());
        assert_eq!(status(403, "ACL not found").missing_permission(), None);
    }

    #[test]
    fn server_errors_are_transient() {
        assert!(status(500, "No path to datacenter").is_transient());
        assert!(!status(400, "Invalid wait time").is_transient());
    }

    #[test]
    fn excerpt_is_bounded() {
        let big = vec![b'x'; 10_000];
        assert_eq!(excerpt(&big).len(), BODY_EXCERPT);
        assert_eq!(excerpt(b" Permission denied\n"), "Permission denied");
    }
}
