//! The process's log writer. Every line — the access log's one per connection included — is formatted
//! on the thread that logs it and put on a bounded queue; one `meshgate-log` thread wakes every
//! [`FLUSH_EVERY`], takes everything queued and writes it to stderr in one `write`. A data-plane core
//! therefore never blocks on stderr (a slow terminal, a full pipe to a log collector) and makes no
//! system call for a log line: the writer thread is never woken by a line (it wakes on its own clock), so
//! queuing one is a few atomic operations. When the queue is full the line is dropped and counted
//! (`meshgate_log_lines_dropped_total`) rather than stalling a core. The guard [`init`] returns flushes
//! what is queued when the process ends.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;
use tracing_subscriber::fmt::MakeWriter;

/// Lines the queue holds before it drops: 800,000 lines a second at [`FLUSH_EVERY`] (its slots take
/// ~400 KB).
const QUEUE_LINES: usize = 16 * 1024;

/// How long a line may wait in the queue: also how often the writer thread wakes when idle.
pub const FLUSH_EVERY: Duration = Duration::from_millis(20);

/// Where the subscriber's lines go: the queue, or stderr once the writer has stopped.
#[derive(Clone)]
struct Queue {
    tx: SyncSender<Vec<u8>>,
    dropped: Arc<AtomicU64>,
}

/// One line being formatted; queued whole when the subscriber is done with it.
struct Line<'a> {
    buf: Vec<u8>,
    queue: &'a Queue,
}

impl Write for Line<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line<'_> {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        match self.queue.tx.try_send(std::mem::take(&mut self.buf)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.queue.dropped.fetch_add(1, Ordering::Relaxed);
            }
            // The writer is gone (the process is ending): write it here rather than lose it.
            Err(TrySendError::Disconnected(line)) => {
                let _ = std::io::stderr().write_all(&line);
            }
        }
    }
}

impl<'a> MakeWriter<'a> for Queue {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line {
            buf: Vec::new(),
            queue: self,
        }
    }
}

/// Flushes the queue and stops the writer thread when dropped.
pub struct Guard {
    stop: Arc<AtomicBool>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(w) = self.writer.take() {
            w.thread().unpark();
            let _ = w.join();
        }
    }
}

/// The writer thread's loop: every [`FLUSH_EVERY`] (or when the guard asks), everything queued in
/// one write.
fn write_batches(rx: Receiver<Vec<u8>>, stop: Arc<AtomicBool>) {
    // stderr is locked only while a batch is written: the rest of the process prints to it too
    // (`eprintln!` of a fatal error), and would wait on a lock held across the sleep.
    let write = |batch: &mut Vec<u8>| {
        let _ = std::io::stderr().lock().write_all(batch);
        batch.clear();
    };
    let mut batch = Vec::with_capacity(64 * 1024);
    loop {
        let stopping = stop.load(Ordering::Acquire);
        while let Ok(line) = rx.try_recv() {
            batch.extend_from_slice(&line);
            if batch.len() >= 1 << 20 {
                write(&mut batch);
            }
        }
        if !batch.is_empty() {
            write(&mut batch);
        }
        if stopping {
            return;
        }
        std::thread::park_timeout(FLUSH_EVERY);
    }
}

/// Installs the subscriber with `filter` (JSON lines when `json`); keep the guard until the process
/// ends. Without a writer thread (the process cannot start one), lines go straight to stderr.
pub fn init(filter: tracing_subscriber::EnvFilter, json: bool) -> Option<Guard> {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_LINES);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("meshgate-log".into())
            .spawn(move || write_batches(rx, stop))
            .ok()
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    let Some(writer) = writer else {
        if json {
            builder.json().with_writer(std::io::stderr).init();
        } else {
            builder.with_writer(std::io::stderr).init();
        }
        return None;
    };
    let dropped = Arc::new(AtomicU64::new(0));
    let counted = dropped.clone();
    meshgate_engine::stats::set_log_drops(move || counted.load(Ordering::Relaxed));
    let queue = Queue { tx, dropped };
    if json {
        builder.json().with_writer(queue).init();
    } else {
        builder.with_writer(queue).init();
    }
    Some(Guard {
        stop,
        writer: Some(writer),
    })
}
