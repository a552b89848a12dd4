//! One core's run: its listeners, its accept loops and connection limits, its tick and its drain. Its
//! private state is [`crate::state::Core`].

use crate::balance::{Handed, Inbox};
use crate::cores::{drain, run_until_shutdown, within, AcceptBackoff, AcceptFailure};
use crate::hook::HookFactory;
use crate::poller::Side;
use crate::state::Core;
use crate::stats::CoreStats;
use crate::sys;
use crate::{EngineError, Shared};
use glommio::sync::{Semaphore, StaticPermit};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

/// How often a core looks at the shutdown flag and republishes labelled counters.
const TICK: Duration = Duration::from_millis(50);
/// Labelled counters are republished (when changed) every this many ticks (200 ms).
const PUBLISH_EVERY_TICKS: u32 = 4;
/// How often a core looks into its hand-over inbox if it cannot wait on the inbox's wake-up.
const INBOX_POLL: Duration = Duration::from_millis(10);
/// Splice pipes idle for a whole interval are closed every this many ticks (10 s).
const TRIM_PIPES_EVERY_TICKS: u32 = 200;
/// What one core starts with.
pub(crate) struct Start {
    /// The core's index.
    pub(crate) index: usize,
    /// The addresses it listens on (every core listens on each).
    pub(crate) addrs: Vec<SocketAddr>,
    /// Listen backlog.
    pub(crate) backlog: u32,
    /// Where it reports that it listens (or why it cannot).
    pub(crate) ready: Sender<Result<(), EngineError>>,
    /// Makes its instance of the connection hook.
    pub(crate) hook: Option<HookFactory>,
    /// Its inbox of connections other cores hand over (`balance = "connections"`, several cores).
    pub(crate) inbox: Option<Inbox>,
}

/// The body of one core's executor.
pub(crate) async fn run(shared: Arc<Shared>, stats: Arc<[CoreStats]>, start: Start) {
    let Start {
        index,
        addrs,
        backlog,
        ready,
        hook,
        inbox,
    } = start;
    let hook = match hook.map(|make| make(index)).transpose() {
        Ok(h) => h,
        Err(message) => {
            let _ = ready.send(Err(EngineError::Hook {
                core: index,
                message,
            }));
            shared.life.exited();
            return;
        }
    };
    let settings = shared.snapshot.load_full().settings.clone();
    let workers = stats.len();
    let core = Rc::new(Core::new(index, shared.clone(), stats, hook));
    // Lives as long as the executor: dropped with it when the core's run ends.
    let waiting = core.start_poller();
    tracing::debug!(core = index, ?waiting, "core waits for readiness");

    let mut listeners = Vec::with_capacity(addrs.len());
    for &addr in &addrs {
        match sys::listen_raw(addr, backlog, true) {
            Ok(l) => listeners.push(l),
            Err(source) => {
                let _ = ready.send(Err(EngineError::Listen { addr, source }));
                shared.life.exited();
                return;
            }
        }
    }
    // Limits are split evenly per core: no shared counter on the accept path.
    let limits = Rc::new(Limits {
        global: Rc::new(Semaphore::new(core_share(
            settings.max_connections,
            workers,
        ))),
        per_listener: (0..addrs.len())
            .map(|_| {
                (settings.max_connections_per_listener > 0).then(|| {
                    Rc::new(Semaphore::new(core_share(
                        settings.max_connections_per_listener,
                        workers,
                    )))
                })
            })
            .collect(),
    });
    // Connections other cores hand over arrive through this core's inbox.
    let inbox = match inbox.map(|i| i.wake_fd().map(|fd| (i, fd))).transpose() {
        Ok(inbox) => inbox,
        Err(source) => {
            let _ = ready.send(Err(EngineError::Descriptors(format!(
                "core {index}: cannot watch its hand-over inbox: {source}"
            ))));
            shared.life.exited();
            return;
        }
    };
    shared.life.listening();
    let _ = ready.send(Ok(()));
    tracing::debug!(core = index, listeners = addrs.len(), "core listening");
    // Runs through the drain too: a connection handed over just before shutdown is served.
    if let Some((inbox, wake)) = inbox {
        glommio::spawn_local(inbox_loop(core.clone(), inbox, wake, limits.clone())).detach();
    }

    let accepting: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(li, listener)| {
            glommio::spawn_local(accept_loop(core.clone(), listener, li, limits.clone()))
        })
        .collect();

    // Tick until shutdown: republish labelled counters meanwhile.
    let mut ticks = 0u32;
    let mut tick = || {
        ticks += 1;
        if ticks % PUBLISH_EVERY_TICKS == 0 {
            core.publish_labelled();
        }
        if ticks % TRIM_PIPES_EVERY_TICKS == 0 {
            core.pipes.trim();
        }
    };
    run_until_shutdown(&shared.life, TICK, &mut tick).await;
    // No core hands this one a connection from now on; what was handed before is served in the drain.
    if let Some(b) = core.balance() {
        b.retire(index);
    }
    shared.life.stopped_listening();
    // Stop accepting: cancelling the accept loops drops (closes) the listeners.
    for task in accepting {
        task.cancel().await;
    }
    let drain_timeout = core.snapshot().settings.drain_timeout();
    tracing::info!(
        core = index,
        live = core.live.get(),
        drain_secs = drain_timeout.as_secs(),
        "draining"
    );
    let left = drain(|| core.live.get(), drain_timeout, TICK, &mut tick).await;
    core.publish_labelled();
    if left > 0 {
        tracing::warn!(
            core = index,
            live = left,
            "drain timeout: closing remaining connections"
        );
    }
    // The executor's idle wait holds the readiness set; let it go while this executor is current, so
    // the set and what still waits in it are freed with the core rather than with the reactor.
    if waiting == Some(crate::poller::Waiting::InTheSet) {
        glommio::net::set_idle_waiter(None);
    }
    shared.life.exited();
}

/// A core's share of a connection limit of `total` over `workers` cores, at least one: limits are split
/// evenly per core, with no shared counter on the accept path. The balance's room is derived from it.
pub(crate) fn core_share(total: u32, workers: usize) -> u64 {
    u64::from(total).div_ceil(workers.max(1) as u64).max(1)
}

/// A core's share of the connection limits: the whole gateway's, and each listener's (if set).
struct Limits {
    global: Rc<Semaphore>,
    per_listener: Vec<Option<Rc<Semaphore>>>,
}

/// The permits one connection holds while this core serves it.
pub(crate) type Permits = (StaticPermit, Option<StaticPermit>);

impl Limits {
    /// Waits for room for one more connection of listener `li`; `None` once the limits are closed.
    async fn acquire(&self, li: usize) -> Option<Permits> {
        let global = self.global.acquire_static_permit(1).await.ok()?;
        let listener = match self.per_listener.get(li).and_then(Option::as_ref) {
            Some(s) => Some(s.acquire_static_permit(1).await.ok()?),
            None => None,
        };
        Some((global, listener))
    }
}

/// Serves an accepted connection on this core, holding `permits` until it ends.
fn serve_here(core: &Rc<Core>, handed: Handed, permits: Permits) {
    let Handed { fd, peer, listener } = handed;
    glommio::spawn_local(crate::conn::handle(
        core.clone(),
        fd,
        peer,
        listener,
        permits,
    ))
    .detach();
}

/// Serves the connections other cores hand to this one, each once this core has room for it. Runs for
/// the executor's life: if waiting on the wake-up ever fails it looks every [`INBOX_POLL`] instead.
async fn inbox_loop(core: Rc<Core>, inbox: Inbox, wake: std::os::fd::OwnedFd, limits: Rc<Limits>) {
    let wake = Side::new(core.poller(), wake);
    let mut polling = false;
    loop {
        let handed = inbox.collect();
        if handed.is_empty() {
            if polling {
                glommio::timer::Timer::new(INBOX_POLL).await;
            } else if let Err(e) = wake.readable().await {
                tracing::error!(core = core.index, error = %e, "waiting on the hand-over inbox failed; looking every 10 ms instead");
                polling = true;
            }
            continue;
        }
        for h in handed {
            let (core, limits) = (core.clone(), limits.clone());
            glommio::spawn_local(async move {
                // The sender saw room here, so this is at once but for a race; bounded all the same
                // (the client's hello deadline has not started).
                let wait = core.snapshot().settings.hello_timeout();
                match within(wait, limits.acquire(h.listener)).await.flatten() {
                    Some(permits) => serve_here(&core, h, permits),
                    None => {
                        tracing::debug!(
                            core = core.index,
                            "no room for a handed-over connection in time; closed"
                        );
                        if let Some(b) = core.balance() {
                            b.ended(core.index);
                        }
                    }
                }
            })
            .detach();
        }
    }
}

async fn accept_loop(
    core: Rc<Core>,
    listener: std::os::fd::OwnedFd,
    li: usize,
    limits: Rc<Limits>,
) {
    let listener = Side::new(core.poller(), listener);
    let mut backoff = AcceptBackoff::default();
    loop {
        // Take the permits before accepting: over the limit, connections wait in the kernel backlog and
        // live ones are never evicted.
        let Some(permits) = limits.acquire(li).await else {
            return;
        };
        // Drains the queue while the permits last: under a burst a core takes every waiting connection
        // in one turn, rather than one per turn of its set (which a busy core makes slowly).
        let accepted = loop {
            match sys::accept(listener.fd()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(e) = listener.readable().await {
                        break Err(e);
                    }
                }
                other => break other,
            }
        };
        match accepted {
            Ok((fd, peer)) => {
                backoff.accepted();
                let handed = Handed {
                    fd,
                    peer,
                    listener: li,
                };
                let Some(balance) = core.balance() else {
                    serve_here(&core, handed, permits);
                    continue;
                };
                let to = balance.assign(core.index);
                if to == core.index {
                    serve_here(&core, handed, permits);
                    continue;
                }
                // The permits are this core's; the receiving core takes its own.
                match balance.hand_over(to, handed) {
                    Ok(()) => {
                        drop(permits);
                        core.stats().handed_over.inc();
                    }
                    Err(handed) => {
                        balance.ended(to);
                        balance.counted_here(core.index);
                        serve_here(&core, handed, permits);
                    }
                }
            }
            Err(e) => match backoff.failed(&e).await {
                // The client gave up while queued, or a signal: take the next one.
                AcceptFailure::Transient => {}
                AcceptFailure::Exhausted => core.stats().accept_backoffs.inc(),
                AcceptFailure::Other => {
                    core.stats().accept_errors.inc();
                    tracing::debug!(error = %e, "accept failed");
                }
            },
        }
    }
}
