//! Serving what a node keeps on disk — the records and payloads of past
//! rounds, which nodes catching up ask for — without stopping the event
//! loop.
//!
//! A record or a payload is read from the data directory on a blocking
//! thread, a few at once, and the answer comes back to the event loop to be
//! sent. Read on the event loop itself, a peer asking for records one after
//! another kept the node from its round for as long as each read took (a
//! payload of a large model's run is tens of megabytes).

use std::sync::Arc;

use p2ptrain_protocol::codec;
use tokio::sync::{mpsc, Semaphore};

use crate::chain::DataDir;
use crate::net::codec::{FetchRequest, FetchResponse};

/// Reads from disk under way at once; the requests past them wait.
const READS_AT_ONCE: usize = 4;

/// The reads under way, each carrying what its answer goes back with (`T`:
/// the request's stream).
pub(super) struct StoredReads<T> {
    permits: Arc<Semaphore>,
    read_tx: mpsc::Sender<(T, FetchResponse)>,
    read_rx: mpsc::Receiver<(T, FetchResponse)>,
}

impl<T: Send + 'static> StoredReads<T> {
    pub(super) fn new() -> Self {
        let (read_tx, read_rx) = mpsc::channel(READS_AT_ONCE);
        Self {
            permits: Arc::new(Semaphore::new(READS_AT_ONCE)),
            read_tx,
            read_rx,
        }
    }

    /// Reads the answer to `request` from `data`, off the event loop; it
    /// comes back from [`Self::answered`] with `carry`.
    pub(super) fn start(&self, data: DataDir, request: FetchRequest, carry: T) {
        let permits = self.permits.clone();
        let read = self.read_tx.clone();
        tokio::spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else {
                return;
            };
            let response = tokio::task::spawn_blocking(move || stored_answer(&data, request))
                .await
                .unwrap_or(FetchResponse::Missing);
            let _ = read.send((carry, response)).await;
        });
    }

    /// The next answer read, with what it was started with.
    pub(super) async fn answered(&mut self) -> Option<(T, FetchResponse)> {
        self.read_rx.recv().await
    }
}

/// The answer to `request` from what `data` holds: a round's record, or a
/// payload by its hash; `Missing` for anything else, or anything that
/// cannot be read.
fn stored_answer(data: &DataDir, request: FetchRequest) -> FetchResponse {
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
        let data = DataDir::new(scratch_dir("stored-reads"));
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
        let mut reads = StoredReads::new();
        for (i, request) in requests.into_iter().enumerate() {
            reads.start(data.clone(), request, i);
        }
        let mut answers = HashMap::new();
        tokio::time::timeout(Duration::from_secs(10), async {
            while answers.len() < requests.len() {
                let (i, response) = reads.answered().await.unwrap();
                answers.insert(i, response);
            }
        })
        .await
        .unwrap();
        let found = |body: Vec<u8>| FetchResponse::Found {
            header: Vec::new(),
            body: Arc::from(body),
        };
        assert_eq!(answers[&0], found(codec::encode(&record(2)).unwrap()));
        assert_eq!(answers[&1], FetchResponse::Missing);
        assert_eq!(answers[&2], found(payload));
        assert_eq!(answers[&3], FetchResponse::Missing);
        // A current round's payload is the engine's to serve, not the disk's.
        assert_eq!(answers[&4], FetchResponse::Missing);
    }
}
