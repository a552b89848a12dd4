//! A sidecar's inbound callers decided by its Consul agent: `POST /v1/agent/connect/authorize` (what
//! Consul's built-in proxy asks per connection), run on a thread of its own so a core only hands the
//! question over. The cores cache verdicts briefly (meshgate-sidecar); an agent that cannot answer gets
//! no verdict, and a caller with none is refused.

use super::metrics::{outcome, ConsulMetrics};
use meshgate_consul::model::{AuthorizeRequest, AuthorizeResponse};
use meshgate_consul::{Client, Request};
use meshgate_sidecar::{Authorize, Question};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Deadline of one authorize call (the core waits 2 s at most anyway).
const CALL_TIMEOUT: Duration = Duration::from_millis(1500);
const PATH: &str = "/v1/agent/connect/authorize";

type Job = (Question, futures_channel::oneshot::Sender<Option<bool>>);

/// Questions go to one worker thread over a channel; answers come back on each question's own reply.
#[derive(Debug)]
pub struct ConsulAuthorizer {
    // A Mutex only so the authorizer is Sync: a core holds it for one channel send.
    jobs: Mutex<Sender<Job>>,
}

impl ConsulAuthorizer {
    /// Starts the worker thread.
    pub fn start(client: Arc<Client>, metrics: Arc<ConsulMetrics>) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("meshgate-consul-authorize".into())
            .spawn(move || serve(&client, &metrics, &rx))?;
        Ok(ConsulAuthorizer {
            jobs: Mutex::new(tx),
        })
    }
}

impl Authorize for ConsulAuthorizer {
    fn ask(&self, question: Question, reply: futures_channel::oneshot::Sender<Option<bool>>) {
        if let Ok(jobs) = self.jobs.lock() {
            // A dead worker drops the reply: the core sees no verdict and refuses.
            let _ = jobs.send((question, reply));
        }
    }
}

fn serve(client: &Client, metrics: &ConsulMetrics, jobs: &Receiver<Job>) {
    while let Ok((q, reply)) = jobs.recv() {
        let body = AuthorizeRequest {
            target: q.target.clone(),
            client_cert_uri: q.client_uri.clone(),
            client_cert_serial: q.serial.clone(),
        };
        let verdict = Request::post(PATH)
            .json(&body)
            .map(|r| r.timeout(CALL_TIMEOUT))
            .and_then(|r| client.call(&r))
            .and_then(|r| r.json::<AuthorizeResponse>(PATH));
        let answer = match verdict {
            Ok(v) => {
                metrics.request(PATH, "ok");
                if !v.authorized {
                    tracing::debug!(caller = %q.client_uri, target = %q.target, reason = %v.reason, "consul refused the caller");
                }
                Some(v.authorized)
            }
            Err(e) => {
                metrics.request(PATH, outcome(&e));
                tracing::warn!(caller = %q.client_uri, target = %q.target, error = %e, "consul authorize failed; without a recent verdict the caller is refused");
                None
            }
        };
        let _ = reply.send(answer);
    }
}
