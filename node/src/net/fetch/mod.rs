//! Fetching over streams kept open: one stream per peer, over which
//! requests go in order, several under way at once ([`codec`] is the wire
//! format).
//!
//! A stream is opened (and its protocol negotiated) on a peer's first
//! request and kept for the next ones, so a fetch costs one request and one
//! response on the wire, with no negotiation and no new stream. Up to
//! [`PIPELINE_DEPTH`] requests are written before the first is answered
//! (`fetch/link.rs`). The swarm's [`libp2p_stream::Behaviour`] hands the
//! streams out; everything here runs in tasks of its own, beside the event
//! loop:
//!
//! - [`Fetcher::send`] queues a request for a peer and returns its
//!   [`FetchId`]; the answer comes back on the receiver that
//!   [`Fetcher::new`] returned, as a [`FetchAnswer`].
//! - [`serve`] accepts the streams that peers open and hands each request
//!   to the event loop as an [`InboundFetch`], which it answers with
//!   [`InboundFetch::respond`].
//!
//! ```no_run
//! # async fn run(swarm: libp2p::Swarm<p2ptrain_node::net::Behaviour>, peer: libp2p::PeerId) {
//! use std::time::Duration;
//! use p2ptrain_node::net::codec::FetchRequest;
//! use p2ptrain_node::net::fetch::{self, Fetcher};
//!
//! let mut control = swarm.behaviour().fetch.new_control();
//! let mut inbound = fetch::serve(&mut control).expect("served once");
//! let payload_len = 653_105; // every payload of the run is this long
//! let (mut fetcher, mut answers) = Fetcher::new(control, Duration::from_secs(120), payload_len);
//! let id = fetcher.send(peer, FetchRequest::Record(3));
//! // ... drive the swarm; answer `inbound.recv()`s; then:
//! let answer = answers.recv().await.expect("the fetcher is alive");
//! assert_eq!(answer.id, id);
//! # }
//! ```

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::{PeerId, Stream};
use libp2p_stream::{AlreadyRegistered, Control, OpenStreamError};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::codec::{self, FetchRequest, FetchResponse, FETCH_PROTOCOL, FETCH_PROTOCOL_V1};

mod link;

use link::Link;
pub use link::PIPELINE_DEPTH;

/// Answers waiting for the event loop, and requests waiting for it, at most.
const QUEUE: usize = 64;

/// Fetch streams one peer may have open to this node at once; a stream
/// past them is closed as it arrives. A node asks over one stream per peer,
/// and a version-1 node opens one per request, with a few requests in
/// flight. Each stream holds at most one response (a payload, or a slice
/// of a checkpoint) while the peer reads it, so a peer that opens streams
/// and never reads holds this many, not as many as the multiplexer allows.
pub const MAX_STREAMS_PER_PEER: usize = 16;

/// Peers whose open streams are counted before the count of those with none
/// open is dropped.
const COUNTED_PEERS: usize = 1024;

/// Names a request sent with [`Fetcher::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FetchId(u64);

/// Why a fetch brought no response.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No stream could be opened to the peer (not connected, or it does
    /// not speak the protocol).
    #[error("no fetch stream: {0}")]
    Open(#[from] OpenStreamError),
    /// The stream failed, or the peer sent something that is not a
    /// response.
    #[error("fetch stream: {0}")]
    Io(#[from] io::Error),
    /// No response within the fetch timeout (to this request, or to the
    /// one before it, which the requests queued behind it fail with).
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// The peer left ([`Fetcher::forget`]) before the request was sent.
    #[error("the peer left")]
    Left,
}

/// The outcome of a request.
#[derive(Debug)]
pub struct FetchAnswer {
    /// The request, as [`Fetcher::send`] named it.
    pub id: FetchId,
    /// The peer asked.
    pub peer: PeerId,
    /// Its response, or why there is none.
    pub result: Result<FetchResponse, FetchError>,
}

/// The asking side: a task per peer, each with its stream.
pub struct Fetcher {
    control: Control,
    links: HashMap<PeerId, mpsc::UnboundedSender<(FetchId, FetchRequest)>>,
    answers: mpsc::Sender<FetchAnswer>,
    timeout: Duration,
    payload_len: u64,
    next: u64,
}

impl Fetcher {
    /// A fetcher that opens its streams through `control`, and the
    /// receiver of its answers. A request with no response within
    /// `timeout` fails, and so does one whose response says its body is
    /// longer than an honest answer's ([`FetchRequest::longest_body`],
    /// with the run's payloads `payload_len` bytes long; 0 for a fetcher
    /// that asks for no payloads).
    pub fn new(
        control: Control,
        timeout: Duration,
        payload_len: u64,
    ) -> (Self, mpsc::Receiver<FetchAnswer>) {
        let (answers, receiver) = mpsc::channel(QUEUE);
        let fetcher = Self {
            control,
            links: HashMap::new(),
            answers,
            timeout,
            payload_len,
            next: 0,
        };
        (fetcher, receiver)
    }

    /// Queues `request` for `peer`; its answer will carry the returned id.
    /// Must be called inside a tokio runtime (the peer's first request
    /// starts its task).
    pub fn send(&mut self, peer: PeerId, request: FetchRequest) -> FetchId {
        self.next += 1;
        let id = FetchId(self.next);
        let mut queued = (id, request);
        if let Some(link) = self.links.get(&peer) {
            match link.send(queued) {
                Ok(()) => return id,
                // The task ended (its answers' receiver went away); start
                // another.
                Err(mpsc::error::SendError(back)) => queued = back,
            }
        }
        let (link, requests) = mpsc::unbounded_channel();
        let _ = link.send(queued);
        self.links.insert(peer, link);
        let task = Link::new(peer, self.control.clone(), self.timeout, self.payload_len);
        tokio::spawn(task.run(requests, self.answers.clone()));
        id
    }

    /// Ends `peer`'s task and closes its stream, for a peer that left: the
    /// requests under way are answered, those queued behind them fail with
    /// [`FetchError::Left`].
    pub fn forget(&mut self, peer: &PeerId) {
        self.links.remove(peer);
    }
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("peers", &self.links.len())
            .field("timeout", &self.timeout)
            .field("sent", &self.next)
            .finish_non_exhaustive()
    }
}

/// A peer's request, for the event loop to answer.
#[derive(Debug)]
pub struct InboundFetch {
    /// Who asks.
    pub peer: PeerId,
    /// What it asks for.
    pub request: FetchRequest,
    reply: oneshot::Sender<FetchResponse>,
}

impl InboundFetch {
    /// Sends `response` back over the peer's stream.
    pub fn respond(self, response: FetchResponse) {
        let _ = self.reply.send(response);
    }
}

/// Starts accepting fetch streams through `control`, of
/// [`FETCH_PROTOCOL`] and of version 1 (whose peers close the stream after
/// one response): the receiver of the requests that arrive on them. A
/// request dropped without a response closes its stream. A peer has at
/// most [`MAX_STREAMS_PER_PEER`] open at once. Must be called inside a
/// tokio runtime.
///
/// # Errors
///
/// [`AlreadyRegistered`] if this swarm already serves fetches.
pub fn serve(control: &mut Control) -> Result<mpsc::Receiver<InboundFetch>, AlreadyRegistered> {
    let current = control.accept(FETCH_PROTOCOL)?;
    let mut incoming = futures::stream::select(current, control.accept(FETCH_PROTOCOL_V1)?);
    let (requests, receiver) = mpsc::channel(QUEUE);
    tokio::spawn(async move {
        let mut open = OpenStreams::default();
        while let Some((peer, mut stream)) = incoming.next().await {
            // Over the peer's limit, the stream is dropped, which closes it.
            let Some(slot) = open.take(peer) else {
                continue;
            };
            stream.ignore_for_keep_alive();
            let requests = requests.clone();
            tokio::spawn(async move {
                serve_stream(peer, stream, requests).await;
                drop(slot);
            });
        }
    });
    Ok(receiver)
}

/// Each peer's open fetch streams, as the permits of a semaphore of
/// [`MAX_STREAMS_PER_PEER`].
#[derive(Default)]
struct OpenStreams(HashMap<PeerId, Arc<Semaphore>>);

impl OpenStreams {
    /// A slot for one more of `peer`'s streams, held while it is served;
    /// `None` when the peer has all its slots.
    fn take(&mut self, peer: PeerId) -> Option<tokio::sync::OwnedSemaphorePermit> {
        if self.0.len() >= COUNTED_PEERS && !self.0.contains_key(&peer) {
            self.0
                .retain(|_, slots| slots.available_permits() < MAX_STREAMS_PER_PEER);
        }
        let slots = self
            .0
            .entry(peer)
            .or_insert_with(|| Arc::new(Semaphore::new(MAX_STREAMS_PER_PEER)));
        Arc::clone(slots).try_acquire_owned().ok()
    }
}

/// Answers the requests of one stream, in order, until the peer closes it
/// or the event loop stops answering.
async fn serve_stream(peer: PeerId, mut stream: Stream, requests: mpsc::Sender<InboundFetch>) {
    while let Ok(Some(request)) = codec::read_request(&mut stream).await {
        let (reply, response) = oneshot::channel();
        let inbound = InboundFetch {
            peer,
            request,
            reply,
        };
        if requests.send(inbound).await.is_err() {
            return;
        }
        let Ok(response) = response.await else {
            return;
        };
        if codec::write_response(&mut stream, &response).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use libp2p::swarm::SwarmEvent;
    use libp2p::StreamProtocol;
    use libp2p_stream::IncomingStreams;

    use super::*;
    use crate::net::loopback::swarm_pair;

    /// Two swarms on loopback, connected, each driven by a task of its
    /// own: the asking side's control, the serving side's and its id.
    async fn connected_pair() -> (Control, Control, PeerId) {
        let (mut asking, mut serving, address) = swarm_pair([21, 22]).await;
        asking.dial(address).unwrap();
        let server = *serving.local_peer_id();
        let (ask, serve) = (
            asking.behaviour().fetch.new_control(),
            serving.behaviour().fetch.new_control(),
        );
        let mut connected = false;
        while !connected {
            tokio::select! {
                _ = serving.select_next_some() => {}
                event = asking.select_next_some() => {
                    connected = matches!(event, SwarmEvent::ConnectionEstablished { .. });
                }
            }
        }
        for mut swarm in [asking, serving] {
            tokio::spawn(async move {
                loop {
                    swarm.select_next_some().await;
                }
            });
        }
        (ask, serve, server)
    }

    /// The body of each answer in these tests.
    const BODY: u64 = 300_000;

    fn found(tag: u8) -> FetchResponse {
        FetchResponse::Found {
            header: vec![tag],
            body: Arc::from(vec![tag; BODY as usize]),
        }
    }

    /// Answers `Record(n)` with [`found`]`(n)` on each stream accepted, and
    /// drops a stream after `per_stream` answers; counts the streams.
    fn answer_records(mut incoming: IncomingStreams, per_stream: usize) -> mpsc::Receiver<usize> {
        let (count, counted) = mpsc::channel(16);
        tokio::spawn(async move {
            let mut streams = 0;
            while let Some((_, mut stream)) = incoming.next().await {
                streams += 1;
                let _ = count.send(streams).await;
                for _ in 0..per_stream {
                    let Ok(Some(FetchRequest::Record(n))) = codec::read_request(&mut stream).await
                    else {
                        break;
                    };
                    let tag = u8::try_from(n).unwrap();
                    if codec::write_response(&mut stream, &found(tag))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        });
        counted
    }

    #[tokio::test]
    async fn a_peer_s_requests_go_one_after_another_over_one_stream() {
        let (ask, mut serve, server) = connected_pair().await;
        let mut streams = answer_records(serve.accept(FETCH_PROTOCOL).unwrap(), usize::MAX);
        let (mut fetcher, mut answers) = Fetcher::new(ask, Duration::from_secs(30), BODY);
        let first = fetcher.send(server, FetchRequest::Record(1));
        let answer = answers.recv().await.unwrap();
        assert_eq!((answer.id, answer.peer), (first, server));
        assert_eq!(answer.result.unwrap(), found(1));
        // Several at once: answered in the order sent, on the same stream.
        let ids: Vec<FetchId> = (2..6)
            .map(|n| fetcher.send(server, FetchRequest::Record(n)))
            .collect();
        for (n, id) in (2..6).zip(ids) {
            let answer = answers.recv().await.unwrap();
            assert_eq!(answer.id, id);
            assert_eq!(answer.result.unwrap(), found(n as u8));
        }
        assert_eq!(streams.recv().await, Some(1));
        assert!(streams.try_recv().is_err(), "a second stream was opened");
    }

    /// The serving side speaks only `protocol` and closes each stream after
    /// one answer: every request is answered, each on a stream of its own.
    async fn answered_on_a_stream_each(protocol: StreamProtocol) {
        let (ask, mut serve, server) = connected_pair().await;
        let mut streams = answer_records(serve.accept(protocol).unwrap(), 1);
        let (mut fetcher, mut answers) = Fetcher::new(ask, Duration::from_secs(30), BODY);
        for n in 1..=3 {
            fetcher.send(server, FetchRequest::Record(n));
            let answer = answers.recv().await.unwrap();
            assert_eq!(answer.result.unwrap(), found(n as u8));
            assert_eq!(streams.recv().await, Some(n as usize));
        }
    }

    #[tokio::test]
    async fn a_peer_that_speaks_only_version_1_is_asked_once_per_stream() {
        answered_on_a_stream_each(FETCH_PROTOCOL_V1).await;
    }

    #[tokio::test]
    async fn a_peer_asking_in_version_1_is_served() {
        let (mut ask, mut serve, server) = connected_pair().await;
        let mut requests = super::serve(&mut serve).unwrap();
        for n in 1..=2u8 {
            // As a version-1 node asks: a stream, a request, its end.
            let mut stream = ask.open_stream(server, FETCH_PROTOCOL_V1).await.unwrap();
            let request = FetchRequest::Record(u64::from(n));
            codec::write_request(&mut stream, &request).await.unwrap();
            futures::AsyncWriteExt::close(&mut stream).await.unwrap();
            let inbound = requests.recv().await.unwrap();
            assert_eq!(inbound.request, request);
            inbound.respond(found(n));
            assert_eq!(
                codec::read_response(&mut stream, BODY).await.unwrap(),
                found(n)
            );
        }
    }

    /// Asks `Record(n)` on `stream` and answers it from `requests`.
    async fn asked_and_answered(
        stream: &mut Stream,
        requests: &mut mpsc::Receiver<InboundFetch>,
        n: u8,
    ) -> io::Result<FetchResponse> {
        codec::write_request(stream, &FetchRequest::Record(u64::from(n))).await?;
        let inbound = requests.recv().await.unwrap();
        assert_eq!(inbound.request, FetchRequest::Record(u64::from(n)));
        inbound.respond(found(n));
        codec::read_response(stream, BODY).await
    }

    #[test]
    fn the_count_of_open_streams_forgets_peers_with_none_open_once_it_is_long() {
        let mut open = OpenStreams::default();
        let busy = PeerId::random();
        let held = open.take(busy).unwrap();
        for _ in 1..COUNTED_PEERS {
            // Each served and done: its slot is back at once.
            drop(open.take(PeerId::random()).unwrap());
        }
        assert_eq!(open.0.len(), COUNTED_PEERS);
        // A new peer past the count: only the peer with a stream open stays.
        let newcomer = PeerId::random();
        let _slot = open.take(newcomer).unwrap();
        assert_eq!(open.0.len(), 2);
        let busy_slots = &open.0[&busy];
        assert_eq!(busy_slots.available_permits(), MAX_STREAMS_PER_PEER - 1);
        drop(held);
    }

    #[tokio::test]
    async fn a_peer_s_streams_past_its_limit_are_closed_as_they_arrive() {
        let (mut ask, mut serve, server) = connected_pair().await;
        let mut requests = super::serve(&mut serve).unwrap();
        let mut open = Vec::new();
        for _ in 0..MAX_STREAMS_PER_PEER {
            open.push(ask.open_stream(server, FETCH_PROTOCOL).await.unwrap());
        }
        let mut over = ask.open_stream(server, FETCH_PROTOCOL).await.unwrap();
        let _ = codec::write_request(&mut over, &FetchRequest::Record(0)).await;
        let refused = tokio::time::timeout(
            Duration::from_secs(10),
            codec::read_response(&mut over, BODY),
        );
        assert!(
            refused
                .await
                .expect("the stream past the limit is open")
                .is_err(),
            "a stream past the limit was answered"
        );
        for (n, stream) in (1..).zip(&mut open) {
            let answer = asked_and_answered(stream, &mut requests, n).await.unwrap();
            assert_eq!(answer, found(n));
        }
        // A stream the peer closes gives its slot back once it has ended.
        let mut closed = open.pop().unwrap();
        futures::AsyncWriteExt::close(&mut closed).await.unwrap();
        let mut rest = Vec::new();
        futures::AsyncReadExt::read_to_end(&mut closed, &mut rest)
            .await
            .unwrap();
        let mut fresh = ask.open_stream(server, FETCH_PROTOCOL).await.unwrap();
        let answer = asked_and_answered(&mut fresh, &mut requests, 99).await;
        assert_eq!(answer.unwrap(), found(99));
        assert!(requests.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_payload_longer_than_the_run_s_is_refused_unread_and_not_asked_again() {
        let (ask, mut serve, server) = connected_pair().await;
        let mut requests = super::serve(&mut serve).unwrap();
        let (mut fetcher, mut answers) = Fetcher::new(ask, Duration::from_secs(30), BODY - 1);
        let id = p2ptrain_protocol::Digest::of(b"a");
        fetcher.send(server, FetchRequest::Payload(id));
        requests.recv().await.unwrap().respond(found(1));
        let answer = answers.recv().await.unwrap();
        assert!(
            matches!(&answer.result, Err(FetchError::Io(e)) if e.kind() == io::ErrorKind::InvalidData),
            "{:?}",
            answer.result
        );
        // The same body answers a request that allows it, on a fresh stream.
        fetcher.send(server, FetchRequest::Record(2));
        requests.recv().await.unwrap().respond(found(2));
        assert_eq!(answers.recv().await.unwrap().result.unwrap(), found(2));
        assert!(requests.try_recv().is_err(), "the payload was asked twice");
    }

    #[tokio::test]
    async fn a_request_on_a_stream_that_closed_goes_again_on_a_fresh_one() {
        answered_on_a_stream_each(FETCH_PROTOCOL).await;
    }

    #[tokio::test]
    async fn requests_behind_one_that_timed_out_fail_with_it() {
        let (ask, mut serve, server) = connected_pair().await;
        // Every stream accepted is read once and never answered.
        let mut incoming = serve.accept(FETCH_PROTOCOL).unwrap();
        let (read_tx, mut read) = mpsc::channel(8);
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Some((_, mut stream)) = incoming.next().await {
                let request = codec::read_request(&mut stream).await.unwrap();
                read_tx.send(request).await.unwrap();
                held.push(stream);
            }
        });
        let (mut fetcher, mut answers) = Fetcher::new(ask, Duration::from_millis(300), BODY);
        for n in 1..=3 {
            fetcher.send(server, FetchRequest::Record(n));
        }
        for _ in 1..=3 {
            let answer = answers.recv().await.unwrap();
            assert!(
                matches!(answer.result, Err(FetchError::Timeout(t)) if t == Duration::from_millis(300)),
                "{:?}",
                answer.result
            );
        }
        assert_eq!(read.recv().await.unwrap(), Some(FetchRequest::Record(1)));
        assert!(read.try_recv().is_err(), "a queued request was sent");
    }

    /// What a stream served by hand read: a request, or its end.
    type Arrival = Option<FetchRequest>;

    /// Serves the streams accepted, one after another, as a test drives
    /// them: each request read is handed out as it arrives, then `None`
    /// when its stream ends; `found(n)` is written for each `n` sent, and
    /// for a 0 the stream is dropped.
    fn serve_by_hand(mut incoming: IncomingStreams) -> (mpsc::Receiver<Arrival>, mpsc::Sender<u8>) {
        let (arrived, arrivals) = mpsc::channel(64);
        let (answer, mut answers) = mpsc::channel::<u8>(64);
        tokio::spawn(async move {
            while let Some((_, stream)) = incoming.next().await {
                let (mut reader, mut writer) = futures::AsyncReadExt::split(stream);
                let reading = async {
                    while let Ok(Some(request)) = codec::read_request(&mut reader).await {
                        if arrived.send(Some(request)).await.is_err() {
                            return;
                        }
                    }
                    let _ = arrived.send(None).await;
                };
                // Whether the test goes on.
                let writing = async {
                    while let Some(tag) = answers.recv().await {
                        if tag == 0 {
                            return true;
                        }
                        if codec::write_response(&mut writer, &found(tag))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    false
                };
                // The stream is done once the asking side ends it.
                tokio::select! {
                    () = reading => {}
                    going_on = writing => {
                        if !going_on {
                            return;
                        }
                        let _ = arrived.send(None).await;
                    }
                }
            }
        });
        (arrivals, answer)
    }

    /// A peer served by hand, asked two requests past the pipeline's
    /// depth, and the requests it has read: the first `PIPELINE_DEPTH`.
    struct Pipelined {
        fetcher: Fetcher,
        answers: mpsc::Receiver<FetchAnswer>,
        arrived: mpsc::Receiver<Arrival>,
        answer: mpsc::Sender<u8>,
        server: PeerId,
        ids: Vec<FetchId>,
    }

    async fn pipelined() -> Result<Pipelined, Box<dyn std::error::Error>> {
        let (ask, mut serve, server) = connected_pair().await;
        let (mut arrived, answer) = serve_by_hand(serve.accept(FETCH_PROTOCOL)?);
        let (mut fetcher, answers) = Fetcher::new(ask, Duration::from_secs(30), BODY);
        let depth = PIPELINE_DEPTH as u64;
        let ids = (1..=depth + 2)
            .map(|n| fetcher.send(server, FetchRequest::Record(n)))
            .collect();
        for n in 1..=depth {
            assert_eq!(arrived.recv().await, Some(Some(FetchRequest::Record(n))));
        }
        Ok(Pipelined {
            fetcher,
            answers,
            arrived,
            answer,
            server,
            ids,
        })
    }

    #[tokio::test]
    async fn a_peer_has_the_pipeline_s_depth_of_requests_before_the_first_is_answered(
    ) -> crate::TestResult {
        // The fetcher is kept: dropped, it would forget the peer.
        let Pipelined {
            fetcher: _fetcher,
            mut answers,
            mut arrived,
            answer,
            server: _,
            ids,
        } = pipelined().await?;
        let depth = PIPELINE_DEPTH as u64;
        let more = tokio::time::timeout(Duration::from_millis(300), arrived.recv());
        assert!(
            more.await.is_err(),
            "more than the depth was sent unanswered"
        );
        // Each answer lets one more request go.
        answer.send(1).await?;
        assert_eq!(
            arrived.recv().await,
            Some(Some(FetchRequest::Record(depth + 1)))
        );
        let first = answers.recv().await.ok_or("no answer")?;
        assert_eq!((first.id, first.result?), (ids[0], found(1)));
        for n in 2..=depth + 2 {
            answer.send(n as u8).await?;
            let next = answers.recv().await.ok_or("no answer")?;
            assert_eq!(
                (next.id, next.result?),
                (ids[n as usize - 1], found(n as u8))
            );
        }
        Ok(())
    }

    #[tokio::test]
    async fn requests_written_behind_one_whose_stream_failed_go_again_on_a_fresh_one(
    ) -> crate::TestResult {
        let (ask, mut serve, server) = connected_pair().await;
        let (mut arrived, answer) = serve_by_hand(serve.accept(FETCH_PROTOCOL)?);
        let (mut fetcher, mut answers) = Fetcher::new(ask, Duration::from_secs(30), BODY);
        let ids: Vec<FetchId> = (1..=3)
            .map(|n| fetcher.send(server, FetchRequest::Record(n)))
            .collect();
        for n in 1..=3 {
            assert_eq!(arrived.recv().await, Some(Some(FetchRequest::Record(n))));
        }
        answer.send(1).await?;
        let first = answers.recv().await.ok_or("no answer")?;
        assert_eq!((first.id, first.result?), (ids[0], found(1)));
        // The stream dies with two requests on it: both are asked again.
        answer.send(0).await?;
        assert_eq!(arrived.recv().await, Some(None));
        for n in 2..=3 {
            assert_eq!(arrived.recv().await, Some(Some(FetchRequest::Record(n))));
        }
        for n in 2..=3u8 {
            answer.send(n).await?;
            let next = answers.recv().await.ok_or("no answer")?;
            assert_eq!((next.id, next.result?), (ids[usize::from(n) - 1], found(n)));
        }
        Ok(())
    }

    #[tokio::test]
    async fn requests_queued_for_a_peer_that_left_are_not_sent() -> crate::TestResult {
        let Pipelined {
            mut fetcher,
            mut answers,
            mut arrived,
            answer,
            server,
            ids,
        } = pipelined().await?;
        let depth = PIPELINE_DEPTH as u64;
        fetcher.forget(&server);
        // Those under way are answered; those queued behind them fail.
        for n in 1..=depth {
            answer.send(n as u8).await?;
            let next = answers.recv().await.ok_or("no answer")?;
            assert_eq!(
                (next.id, next.result?),
                (ids[n as usize - 1], found(n as u8))
            );
        }
        for id in &ids[depth as usize..] {
            let left = answers.recv().await.ok_or("no answer")?;
            assert_eq!(left.id, *id);
            assert!(
                matches!(left.result, Err(FetchError::Left)),
                "{:?}",
                left.result
            );
        }
        assert_eq!(
            arrived.recv().await,
            Some(None),
            "a queued request was sent"
        );
        // Asked again, the peer gets a task and a stream of its own again.
        let again = fetcher.send(server, FetchRequest::Record(4));
        assert_eq!(arrived.recv().await, Some(Some(FetchRequest::Record(4))));
        answer.send(4).await?;
        let answer = answers.recv().await.ok_or("no answer")?;
        assert_eq!((answer.id, answer.result?), (again, found(4)));
        Ok(())
    }

    #[tokio::test]
    async fn a_request_left_unanswered_by_the_node_is_tried_twice_then_fails() {
        let (ask, mut serve, server) = connected_pair().await;
        let mut requests = super::serve(&mut serve).unwrap();
        let (mut fetcher, mut answers) = Fetcher::new(ask, Duration::from_secs(30), BODY);
        fetcher.send(server, FetchRequest::Record(4));
        for _ in 0..2 {
            let inbound = requests.recv().await.unwrap();
            assert_eq!(inbound.request, FetchRequest::Record(4));
            drop(inbound);
        }
        let answer = answers.recv().await.unwrap();
        assert!(
            matches!(answer.result, Err(FetchError::Io(_))),
            "{:?}",
            answer.result
        );
        // The next request opens a fresh stream, and is answered.
        fetcher.send(server, FetchRequest::Record(5));
        requests.recv().await.unwrap().respond(found(5));
        assert_eq!(answers.recv().await.unwrap().result.unwrap(), found(5));
    }
}
