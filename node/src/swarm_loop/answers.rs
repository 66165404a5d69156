//! Answers to peers' requests that take a while to make — a record or a
//! payload of a past round read from disk, a checkpoint slice cut with its
//! proof — made off the event loop.
//!
//! Each is made on a blocking thread, a few at once, and comes back to the
//! event loop to be sent. Made on the event loop itself, a peer asking for
//! one after another kept the node from its round for as long as each took:
//! a payload of a large model's run is tens of megabytes, and a 1 MiB slice
//! takes about 0.2 ms to cut.
//!
//! Requests past those being made wait their peer's turn: the peers with
//! requests waiting take turns, one answer each, so a peer with 16 streams
//! open gets no more of the node's time than one with a single stream.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use libp2p::PeerId;
use p2ptrain_protocol::codec;
use tokio::sync::mpsc;

use crate::chain::DataDir;
use crate::net::codec::{FetchRequest, FetchResponse};

/// Answers being made at once; the requests past them wait.
const AT_ONCE: usize = 4;

/// What makes an answer.
type Make = Box<dyn FnOnce() -> FetchResponse + Send>;

/// The answers being made, each with what it goes back with (`T`: the
/// request's stream).
pub(super) struct Answers<T> {
    turns: Arc<Mutex<Turns<T>>>,
    made_tx: mpsc::Sender<(T, FetchResponse)>,
    made_rx: mpsc::Receiver<(T, FetchResponse)>,
}

/// The requests waiting, by peer, and whose turn is next.
struct Turns<T> {
    /// Each peer's requests waiting, oldest first; a peer is here only
    /// while it has some.
    waiting: HashMap<PeerId, VecDeque<(T, Make)>>,
    /// The peers in `waiting`, the next to be served first.
    order: VecDeque<PeerId>,
    /// Answers being made.
    making: usize,
    at_once: usize,
}

impl<T> Turns<T> {
    /// The next request to make an answer for, if one may start.
    fn next(&mut self) -> Option<(T, Make)> {
        if self.making >= self.at_once {
            return None;
        }
        let peer = self.order.pop_front()?;
        let queue = self.waiting.get_mut(&peer)?;
        let next = queue.pop_front()?;
        if queue.is_empty() {
            self.waiting.remove(&peer);
        } else {
            self.order.push_back(peer);
        }
        self.making += 1;
        Some(next)
    }
}

impl<T: Send + 'static> Answers<T> {
    pub(super) fn new() -> Self {
        Self::with_at_once(AT_ONCE)
    }

    fn with_at_once(at_once: usize) -> Self {
        let (made_tx, made_rx) = mpsc::channel(at_once);
        let turns = Turns {
            waiting: HashMap::new(),
            order: VecDeque::new(),
            making: 0,
            at_once,
        };
        Self {
            turns: Arc::new(Mutex::new(turns)),
            made_tx,
            made_rx,
        }
    }

    /// Makes an answer to `peer` with `make` on a blocking thread, once its
    /// turn comes; it comes back from [`Self::made`] with `carry`. One that
    /// cannot be made (`make` panicked) is `Missing`. Must be called inside
    /// a tokio runtime.
    pub(super) fn start<F>(&self, peer: PeerId, carry: T, make: F)
    where
        F: FnOnce() -> FetchResponse + Send + 'static,
    {
        {
            let mut turns = lock(&self.turns);
            let Turns { waiting, order, .. } = &mut *turns;
            let queue = waiting.entry(peer).or_default();
            if queue.is_empty() {
                order.push_back(peer);
            }
            queue.push_back((carry, Box::new(make)));
        }
        start_next(&self.turns, &self.made_tx);
    }

    /// The next answer made, with what it was started with.
    pub(super) async fn made(&mut self) -> Option<(T, FetchResponse)> {
        self.made_rx.recv().await
    }
}

fn lock<T>(turns: &Mutex<Turns<T>>) -> MutexGuard<'_, Turns<T>> {
    turns.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starts making the answers whose turn it is, while fewer than the limit
/// are being made; each, once made and handed back, starts the next.
fn start_next<T: Send + 'static>(
    turns: &Arc<Mutex<Turns<T>>>,
    made: &mpsc::Sender<(T, FetchResponse)>,
) {
    while let Some((carry, make)) = lock(turns).next() {
        let (turns, made) = (turns.clone(), made.clone());
        tokio::spawn(async move {
            let response = tokio::task::spawn_blocking(make)
                .await
                .unwrap_or(FetchResponse::Missing);
            let _ = made.send((carry, response)).await;
            lock(&turns).making -= 1;
            start_next(&turns, &made);
        });
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
            answers.start(PeerId::random(), i, move || stored_answer(&data, request));
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
        answers.start(PeerId::random(), 0, || panic!("a reader failed"));
        answers.start(PeerId::random(), 1, || FetchResponse::Found {
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

    #[tokio::test]
    async fn peers_with_requests_waiting_take_turns() -> crate::TestResult {
        let (busy, other) = (PeerId::random(), PeerId::random());
        let mut answers = Answers::with_at_once(1);
        let found = |tag: u8| FetchResponse::Found {
            header: vec![tag],
            body: Arc::from(vec![tag]),
        };
        // The one answer made at a time waits until the rest are queued.
        let (open, gate) = std::sync::mpsc::channel::<()>();
        answers.start(busy, 0, move || {
            let _ = gate.recv();
            found(0)
        });
        for tag in 1..=3 {
            answers.start(busy, tag, move || found(tag));
        }
        answers.start(other, 10, move || found(10));
        open.send(())?;
        let mut order = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), async {
            while order.len() < 5 {
                let Some((tag, response)) = answers.made().await else {
                    break;
                };
                assert_eq!(response, found(tag));
                order.push(tag);
            }
        })
        .await?;
        // The other peer's one request goes after the busy peer's first
        // waiting one, not after all three.
        assert_eq!(order, [0, 1, 10, 2, 3]);
        Ok(())
    }
}
