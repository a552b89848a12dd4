//! The process's log writer. Every line — the access log's one per connection included — is formatted
//! on the thread that logs it and handed to a queue; one `meshgate-log` thread drains the queue and writes
//! what it took in one `write` to stderr. So a data-plane core never blocks on stderr (a slow terminal,
//! a full pipe to a log collector) and never makes a system call for a log line. When the queue is full
//! the line is dropped and counted (`meshgate_log_lines_dropped_total`) rather than stalling a core.

use std::io::BufWriter;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};

/// Lines the queue holds before it drops (about 10 MB of access log at ~150 bytes a line).
const QUEUE_LINES: usize = 64 * 1024;

/// Bytes the writer thread gathers before writing; it also writes whenever the queue runs empty.
const BATCH_BYTES: usize = 64 * 1024;

/// Installs the subscriber with `filter`; the guard flushes what is queued when dropped (keep it alive
/// until the process ends).
pub fn init(filter: tracing_subscriber::EnvFilter, json: bool) -> WorkerGuard {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUE_LINES)
        .thread_name("meshgate-log")
        .finish(BufWriter::with_capacity(BATCH_BYTES, std::io::stderr()));
    let drops = writer.error_counter();
    meshgate_engine::stats::set_log_drops(move || drops.dropped_lines() as u64);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
    guard
}
