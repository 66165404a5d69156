//! Answers to peers' requests that take a while to make — a record or a
//! payload of a past round read from disk, a checkpoint slice cut with its
//! proof — made off the event loop.
//!
//! Each is made on a blocking thread, a few at once, and comes back to the
//! event loop to be sent. Made on the event loop itself, a peer asking for
//! one after another kept the node from its round for as long as each took:
//! a payload of a large model's run is tens of megabytes, and a 1 MiB slice
//! takes about 0.2 ms to cut.

use std::sync::Arc;

use p2ptrain_protocol::codec;
use tokio::sync::{mpsc, Semaphore};

use crate::chain::DataDir;
use crate::net::codec::{FetchRequest, FetchResponse};

/// Answers being made at once; the requests past them wait.
const AT_ONCE: usize = 4;

/// The answers being made, each with what it goes back with (`T`: the
/// request's stream).
pub(super) struct Answers<T> {
    permits: Arc<Semaphore>,
    made_tx: mpsc::Sender<(T, FetchResponse)>,
    made_rx: mpsc::Receiver<(T, FetchResponse)>,
}

impl<T: Send + 'static> Answers<T> {
    pub(super) fn new() -> Self {
        let (made_tx, made_rx) = mpsc::channel(AT_ONCE);
        Self {
            permits: Arc::new(Semaphore::new(AT_ONCE)),
            made_tx,
            made_rx,
        }
    }

    /// Makes an answer with `make` on a blocking thread; it comes back from
    /// [`Self::made`] with `carry`. One that cannot be made (`make`
    /// panicked) is `Missing`.
    pub(super) fn start<F>(&self, carry: T, make: F)
    where
        F: FnOnce() -> FetchResponse + Send + 'static,
    {
        let permits = self.permits.clone();
        let made = self.made_tx.clone();
        tokio::spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else {
                return;
            };
            let response = tokio::task::spawn_blocking(make)
                .await
                .unwrap_or(FetchResponse::Missing);
            let _ = made.send((carry, response)).await;
        });
    }

    /// The next answer made, with what it was started with.
    pub(super) async fn made(&mut self) -> Option<(T, FetchResponse)> {
        self.made_rx.recv().await
    }
}

/// The answer to `request` from what `data` holds: a round's record, or a
/// payload by its hash; `Missing` for anything else, or anything that
/// cannot be read.
pub(super) fn stored_answer(data: &DataDir, request: FetchRequest) -> FetchResponse {
    let body = match request {
        FetchRequest::Record(round) => data
            .record(round)
            .ok()
            .flatten()
            .and_then(|record| codec::encode(&record).ok()),
        FetchRequest::StoredPayload(hash) => data.payload(&hash).ok(),
        _ => None,
    };
    match body {
        Some(body) => FetchResponse::Found {
            header: Vec::new(),
            body: Arc::from(body),
        },
        None => FetchResponse::Missing,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use p2ptrain_protocol::Digest;

    use super::*;
    use crate::scratch::scratch_dir;
    use crate::swarm_loop::persist::tests::record;

    #[tokio::test]
    async fn records_and_payloads_on_disk_are_answered_and_the_rest_is_missing() {
        let data = DataDir::new(scratch_dir("stored-answers"));
        data.write_record(2, &record(2)).unwrap();
        let payload = vec![9u8; 300_000];
        let stored = data.write_payload(&payload).unwrap();
        let requests = [
            FetchRequest::Record(2),
            FetchRequest::Record(3),
            FetchRequest::StoredPayload(stored),
            FetchRequest::StoredPayload(Digest::of(b"never stored")),
            FetchRequest::Payload(stored),
        ];
        let mut answers = Answers::new();
        for (i, request) in requests.into_iter().enumerate() {
            let data = data.clone();
            answers.start(i, move || stored_answer(&data, request));
        }
        let mut made = HashMap::new();
        tokio::time::timeout(Duration::from_secs(10), async {
            while made.len() < requests.len() {
                let (i, response) = answers.made().await.unwrap();
                made.insert(i, response);
            }
        })
        .await
        .unwrap();
        let found = |body: Vec<u8>| FetchResponse::Found {
            header: Vec::new(),
            body: Arc::from(body),
        };
        assert_eq!(made[&0], found(codec::encode(&record(2)).unwrap()));
        assert_eq!(made[&1], FetchResponse::Missing);
        assert_eq!(made[&2], found(payload));
        assert_eq!(made[&3], FetchResponse::Missing);
        // A current round's payload is the engine's to serve, not the disk's.
        assert_eq!(made[&4], FetchResponse::Missing);
    }

    #[tokio::test]
    async fn an_answer_that_cannot_be_made_is_missing_and_the_others_still_come() {
        let mut answers = Answers::new();
        answers.start(0, || panic!("a reader failed"));
        answers.start(1, || FetchResponse::Found {
            header: vec![1],
            body: Arc::from(vec![2]),
        });
        let mut made = HashMap::new();
        tokio::time::timeout(Duration::from_secs(10), async {
            while made.len() < 2 {
                let (i, response) = answers.made().await.unwrap();
                made.insert(i, response);
            }
        })
        .await
        .unwrap();
        assert_eq!(made[&0], FetchResponse::Missing);
        assert!(matches!(made[&1], FetchResponse::Found { .. }));
    }
}
