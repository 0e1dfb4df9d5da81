//! Per-packet in-process queues. All claims on one packet in this process go through one
//! task, which drains up to `max_batch` waiting claims into one transaction (group commit):
//! one row lock and one commit for many claims instead of one each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use topology::Uid;

use super::{ClaimError, Inner, Permit};
use crate::store::{ClaimOutcome, StoreError};

/// A queue whose task saw nothing for this long goes away.
const IDLE: Duration = Duration::from_secs(30);
/// Claims waiting per packet before `submit` itself waits (the gate keeps it far below).
const DEPTH: usize = 4096;

type Reply = oneshot::Sender<Result<ClaimOutcome, Arc<StoreError>>>;

struct Job {
    uid: Uid,
    reply: Reply,
    /// The attempt's admission, given back when the job is dropped: after its batch has
    /// replied, or with the queue if the task ends. Never before its commit is done, so the
    /// gate counts a claim whose client hung up until its work is really over.
    permit: Option<Permit>,
}

pub(super) struct Queues {
    inner: Arc<Inner>,
    max_batch: usize,
    /// One sender per packet with a live task. Guarded by a mutex because a task removes its
    /// own entry when idle, and must do so atomically with checking that nothing is queued.
    senders: Arc<Mutex<HashMap<String, mpsc::Sender<Job>>>>,
}

impl Queues {
    pub(super) fn new(inner: Arc<Inner>, max_batch: usize) -> Queues {
        Queues {
            inner,
            max_batch,
            senders: Arc::default(),
        }
    }

    pub(super) async fn submit(
        &self,
        packet_id: &str,
        uid: Uid,
        mut permit: Option<Permit>,
    ) -> Result<ClaimOutcome, ClaimError> {
        // A task may retire between our lookup and our send; the second try starts a new one.
        for _ in 0..2 {
            let (reply, answer) = oneshot::channel();
            let tx = self.sender(packet_id);
            let job = Job {
                uid: uid.clone(),
                reply,
                permit: permit.take(),
            };
            if let Err(mpsc::error::SendError(job)) = tx.send(job).await {
                permit = job.permit;
                self.senders
                    .lock()
                    .expect("queues lock poisoned")
                    .remove(packet_id);
                continue;
            }
            return match answer.await {
                Ok(result) => result.map_err(ClaimError::Store),
                Err(_) => Err(ClaimError::QueueStopped),
            };
        }
        Err(ClaimError::QueueStopped)
    }

    fn sender(&self, packet_id: &str) -> mpsc::Sender<Job> {
        let mut senders = self.senders.lock().expect("queues lock poisoned");
        if let Some(tx) = senders.get(packet_id).filter(|tx| !tx.is_closed()) {
            return tx.clone();
        }
        let (tx, rx) = mpsc::channel(DEPTH);
        senders.insert(packet_id.to_owned(), tx.clone());
        tokio::spawn(drain(
            self.inner.clone(),
            self.senders.clone(),
            packet_id.to_owned(),
            rx,
            self.max_batch,
        ));
        tx
    }
}

async fn drain(
    inner: Arc<Inner>,
    senders: Arc<Mutex<HashMap<String, mpsc::Sender<Job>>>>,
    packet_id: String,
    mut rx: mpsc::Receiver<Job>,
    max_batch: usize,
) {
    loop {
        let first = match tokio::time::timeout(IDLE, rx.recv()).await {
            Ok(Some(job)) => job,
            Ok(None) => return,
            Err(_idle) => {
                let retire = {
                    let mut map = senders.lock().expect("queues lock poisoned");
                    let idle = rx.is_empty();
                    if idle {
                        map.remove(&packet_id);
                        rx.close();
                    }
                    idle
                };
                if retire {
                    // Anything sent between the check and close is still in the buffer.
                    while let Ok(job) = rx.try_recv() {
                        run_batch(&inner, &packet_id, vec![job]).await;
                    }
                    return;
                }
                continue;
            }
        };
        let mut jobs = vec![first];
        while jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        run_batch(&inner, &packet_id, jobs).await;
    }
}

async fn run_batch(inner: &Inner, packet_id: &str, jobs: Vec<Job>) {
    let uids = jobs.iter().map(|j| j.uid.clone()).collect();
    match inner.commit(packet_id, uids).await {
        Ok(outcomes) => {
            for (job, outcome) in jobs.into_iter().zip(outcomes) {
                let _ = job.reply.send(Ok(outcome));
            }
        }
        Err(e) => {
            match e.fenced() {
                Some(f) => {
                    tracing::warn!(packet_id, error = %f, "claim batch refused by the fence")
                }
                None => tracing::error!(packet_id, error = %e, "claim batch failed"),
            }
            let e = Arc::new(e);
            for job in jobs {
                let _ = job.reply.send(Err(e.clone()));
            }
        }
    }
}
