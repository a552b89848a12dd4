//! The one signal path of both runners: SIGHUP becomes [`Signal::Reload`], SIGTERM and SIGINT become
//! [`Signal::Stop`], delivered in order on a channel that a runner waits on (no polling). A second stop
//! while draining exits at once.

use crate::error::{ControlError, EXIT_HOST};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

/// What the operator asked for.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGHUP: re-read the configuration.
    Reload,
    /// SIGTERM or SIGINT: stop accepting, drain, exit.
    Stop,
}

/// Signals in the order they arrived.
pub struct Signals {
    rx: Receiver<Signal>,
    /// Keeps the channel open (waiting on it never reads as "the process's signals are gone") and lets
    /// the process stop itself ([`Signals::sender`]).
    keep: Sender<Signal>,
}

impl Signals {
    /// Installs the process's handlers (SIGHUP no longer kills it) and forwards them from a thread.
    pub fn install() -> Result<Signals, ControlError> {
        let mut signals = signal_hook::iterator::Signals::new([SIGHUP, SIGTERM, SIGINT])
            .map_err(|e| ControlError::Host(format!("cannot install signal handlers: {e}")))?;
        let (tx, rx) = std::sync::mpsc::channel();
        let keep = tx.clone();
        std::thread::Builder::new()
            .name("meshgate-signals".into())
            .spawn(move || {
                for s in signals.forever() {
                    let signal = if s == SIGHUP {
                        Signal::Reload
                    } else {
                        Signal::Stop
                    };
                    if tx.send(signal).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| ControlError::Host(format!("signal thread: {e}")))?;
        Ok(Signals { rx, keep })
    }

    /// Signals fed by the caller instead of the process (embedding, the demo, tests).
    pub fn channel() -> (Sender<Signal>, Signals) {
        let (tx, rx) = std::sync::mpsc::channel();
        (tx.clone(), Signals { rx, keep: tx })
    }

    /// A sender into this channel: how the process stops itself (Consul refused the gateway, …).
    pub fn sender(&self) -> Sender<Signal> {
        self.keep.clone()
    }

    /// Waits for the next signal (the channel stays open while `self` lives: `None` only if it closed).
    pub fn recv(&self) -> Option<Signal> {
        self.rx.recv().ok()
    }

    /// Waits up to `timeout` for the next signal: `Ok(None)` when none came, `Err(())` when no more can.
    #[allow(clippy::result_unit_err)]
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Signal>, ()> {
        match self.rx.recv_timeout(timeout) {
            Ok(s) => Ok(Some(s)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(()),
        }
    }

    /// From now on, a second stop exits the process at once instead of waiting for the drain.
    pub fn exit_on_second_stop(self) {
        std::thread::spawn(move || {
            while let Some(s) = self.recv() {
                if s == Signal::Stop {
                    tracing::warn!("second signal: exiting without waiting for the drain");
                    std::process::exit(i32::from(EXIT_HOST));
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_detached_channel_delivers_in_order_and_never_reads_as_closed() {
        let (tx, signals) = Signals::channel();
        assert_eq!(signals.recv_timeout(Duration::ZERO), Ok(None));
        tx.send(Signal::Reload).expect("send");
        tx.send(Signal::Stop).expect("send");
        drop(tx);
        assert_eq!(signals.recv(), Some(Signal::Reload));
        assert_eq!(signals.recv_timeout(Duration::ZERO), Ok(Some(Signal::Stop)));
        assert_eq!(signals.recv_timeout(Duration::ZERO), Ok(None));
    }
}
