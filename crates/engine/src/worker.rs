//! One core's run: its listeners, its accept loops and connection limits, its tick and its drain. Its
//! private state is [`crate::state::Core`].

use crate::cores::{drain, run_until_shutdown, AcceptBackoff, AcceptFailure};
use crate::hook::HookFactory;
use crate::poller::Side;
use crate::state::Core;
use crate::stats::CoreStats;
use crate::sys;
use crate::{EngineError, Shared};
use glommio::sync::Semaphore;
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
/// Splice pipes idle for a whole interval are closed every this many ticks (10 s).
const TRIM_PIPES_EVERY_TICKS: u32 = 200;
/// The body of one core's executor.
pub(crate) async fn run(
    index: usize,
    shared: Arc<Shared>,
    stats: Arc<[CoreStats]>,
    addrs: Vec<SocketAddr>,
    backlog: u32,
    ready: Sender<Result<(), EngineError>>,
    hook: Option<HookFactory>,
) {
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
    let workers = stats.len() as u64;
    let core = Rc::new(Core::new(index, shared.clone(), stats, hook));
    // Lives as long as the executor: dropped with it when the core's run ends.
    if let Some(drive) = core.poller_driver() {
        glommio::spawn_local(drive).detach();
    }

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
    let per_core = |total: u32| u64::from(total).div_ceil(workers).max(1);
    let global = Rc::new(Semaphore::new(per_core(settings.max_connections)));
    shared.life.listening();
    let _ = ready.send(Ok(()));
    tracing::debug!(core = index, listeners = addrs.len(), "core listening");

    let accepting: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(li, listener)| {
            let limit = (settings.max_connections_per_listener > 0).then(|| {
                Rc::new(Semaphore::new(per_core(
                    settings.max_connections_per_listener,
                )))
            });
            glommio::spawn_local(accept_loop(
                core.clone(),
                listener,
                li,
                global.clone(),
                limit,
            ))
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
    shared.life.exited();
}

async fn accept_loop(
    core: Rc<Core>,
    listener: std::os::fd::OwnedFd,
    li: usize,
    global: Rc<Semaphore>,
    per_listener: Option<Rc<Semaphore>>,
) {
    let listener = Side::new(core.poller(), listener);
    let mut backoff = AcceptBackoff::default();
    loop {
        // Take the permits before accepting: over the limit, connections wait in the kernel backlog and
        // live ones are never evicted.
        let Ok(global_permit) = global.acquire_static_permit(1).await else {
            return;
        };
        let listener_permit = match &per_listener {
            Some(s) => match s.acquire_static_permit(1).await {
                Ok(p) => Some(p),
                Err(_) => return,
            },
            None => None,
        };
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
            Ok((stream, peer)) => {
                backoff.accepted();
                let core = core.clone();
                glommio::spawn_local(async move {
                    crate::conn::handle(&core, stream, peer, li).await;
                    drop((global_permit, listener_permit));
                })
                .detach();
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
