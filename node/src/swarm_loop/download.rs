//! A checkpoint download: the slices of one checkpoint fetched from several
//! peers at once, each checked as it arrives against the hash that the
//! signed commits name ([`crate::net::slices`]).
//!
//! The download itself does no I/O: it says which slice to ask of which
//! peer, and takes the answers. A slice that a peer lacks or sends wrong
//! goes to another peer, and so does one it fails to send once it has
//! failed a few requests; a peer that sent a wrong slice is asked nothing
//! more. The download fails when some slice is left with no peer
//! to ask.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::Hash;

use libp2p::PeerId;
use p2ptrain_protocol::Digest;

use crate::chain::ChainState;
use crate::engine::Head;
use crate::net::codec::FetchResponse;
use crate::net::slices;

/// Slice requests in flight per peer at most, each on a lane of its own
/// ([`crate::net::fetch::Fetcher::send_on`]): while one slice is on the
/// wire, the peer cuts the next. A peer starts with one lane and gains one
/// per slice it sends, so its streams open one at a time (a peer drops a
/// new stream it cannot take at once).
const IN_FLIGHT_PER_PEER: usize = 8;

/// Failed requests (a dropped stream, a timeout) a peer is forgiven before
/// it is asked nothing more that it failed.
const FAILURES_PER_PEER: usize = 3;

/// A peer's answer to a slice request.
#[derive(Debug, Clone, Copy)]
pub(super) enum Answer<'a> {
    /// The slice, with its proof.
    Slice(&'a [u8]),
    /// The peer does not hold the checkpoint.
    Missing,
    /// The request failed on the way: the peer may be asked again.
    Failed,
}

impl<'a> Answer<'a> {
    /// The answer a fetch brought: its response, `None` for a request that
    /// failed.
    pub(super) fn of(response: Option<&'a FetchResponse>) -> Self {
        match response {
            Some(FetchResponse::Found { body, .. }) => Answer::Slice(body),
            Some(FetchResponse::Missing) => Answer::Missing,
            None => Answer::Failed,
        }
    }
}

/// What became of an answer.
#[derive(Debug)]
pub(super) enum Progress {
    /// More slices to come.
    Going,
    /// Every slice is here: the checkpoint.
    Done(ChainState),
    /// A slice is left that no peer can give.
    Failed,
}

/// One checkpoint being fetched; `K` keys its requests.
#[derive(Debug)]
pub(super) struct Download<K> {
    /// The head the checkpoint starts.
    pub head: Head,
    /// The peer whose commit named it.
    pub from: PeerId,
    /// The checkpoint, filled in as slices arrive.
    content: ChainState,
    slices: Vec<(u64, u64)>,
    /// Slices not held and not asked for.
    waiting: BTreeSet<usize>,
    /// Requests in flight: slice, peer and lane.
    asked: HashMap<K, (usize, PeerId, usize)>,
    /// Peers that may be asked, in order.
    peers: Vec<PeerId>,
    /// Peers that could not give a slice.
    tried: HashMap<usize, HashSet<PeerId>>,
    /// Lanes each peer may use now (one to start with).
    lanes: HashMap<PeerId, usize>,
    /// Failed requests per peer.
    failures: HashMap<PeerId, usize>,
    held: usize,
    next_peer: usize,
}

impl<K: Hash + Eq + Copy> Download<K> {
    /// A download of `head`'s checkpoint, a state of `params` parameters,
    /// from `peers`, `from` (the committer) first. Each slice is put in
    /// place as it arrives: the download holds the state's memory and no
    /// copy of its bytes.
    pub fn new(
        head: Head,
        params: usize,
        from: PeerId,
        peers: impl IntoIterator<Item = PeerId>,
    ) -> Self {
        let slices = slices::plan(ChainState::len_of(params));
        let mut candidates = vec![from];
        candidates.extend(peers.into_iter().filter(|p| *p != from));
        Self {
            head,
            from,
            content: ChainState {
                params: vec![0.0; params],
                momentum: vec![0.0; params],
            },
            waiting: (0..slices.len()).collect(),
            slices,
            asked: HashMap::new(),
            peers: candidates,
            tried: HashMap::new(),
            lanes: HashMap::new(),
            failures: HashMap::new(),
            held: 0,
            next_peer: 0,
        }
    }

    /// The checkpoint hash.
    pub fn hash(&self) -> Digest {
        self.head.base
    }

    /// Bytes held, and the checkpoint's length.
    pub fn progress(&self) -> (u64, u64) {
        let total = self.content.byte_len();
        let held = self.held as u64 * slices::SLICE_LEN;
        (held.min(total), total)
    }

    /// Adds a peer that may hold the checkpoint (one that just connected).
    pub fn add_peer(&mut self, peer: PeerId) {
        if !self.peers.contains(&peer) {
            self.peers.push(peer);
        }
    }

    /// The next requests to send: `(peer, lane, start, len)`, no two in
    /// flight on one peer's lane. `send` returns the request's key (its
    /// id), by which its answer comes back.
    pub fn pump(&mut self, mut send: impl FnMut(PeerId, usize, u64, u64) -> Option<K>) {
        let waiting: Vec<usize> = self.waiting.iter().copied().collect();
        for slice in waiting {
            let Some((peer, lane)) = self.pick_peer(slice) else {
                continue;
            };
            let (start, len) = self.slices[slice];
            if let Some(key) = send(peer, lane, start, len) {
                self.waiting.remove(&slice);
                self.asked.insert(key, (slice, peer, lane));
            }
        }
    }

    /// Counts a failed request of `peer`'s and takes it down to one lane;
    /// whether it may still be asked what it failed.
    fn forgive(&mut self, peer: PeerId) -> bool {
        self.lanes.insert(peer, 1);
        let failures = self.failures.entry(peer).or_default();
        *failures += 1;
        *failures <= FAILURES_PER_PEER
    }

    /// A peer for `slice`, and its free lane: round robin over those with
    /// one that have not failed it.
    fn pick_peer(&mut self, slice: usize) -> Option<(PeerId, usize)> {
        let free_lane = |peer: &PeerId| {
            let lanes = self.lanes.get(peer).copied().unwrap_or(1);
            (0..lanes).find(|lane| {
                !self
                    .asked
                    .values()
                    .any(|(_, asked, busy)| asked == peer && busy == lane)
            })
        };
        let tried = self.tried.get(&slice);
        for offset in 0..self.peers.len() {
            let peer = self.peers[(self.next_peer + offset) % self.peers.len()];
            if tried.is_some_and(|t| t.contains(&peer)) {
                continue;
            }
            if let Some(lane) = free_lane(&peer) {
                self.next_peer = (self.next_peer + offset + 1) % self.peers.len();
                return Some((peer, lane));
            }
        }
        None
    }

    /// Whether `key` is one of this download's requests.
    pub fn owns(&self, key: &K) -> bool {
        self.asked.contains_key(key)
    }

    /// Takes the answer to request `key`.
    pub fn answer(&mut self, key: K, answer: Answer<'_>) -> Progress {
        let Some((index, peer, _)) = self.asked.remove(&key) else {
            return Progress::Going;
        };
        let (start, len) = self.slices[index];
        let total = self.content.byte_len();
        match answer {
            Answer::Slice(slice) => {
                match slices::verify_slice(&self.head.base, total, start, len, slice) {
                    Ok(bytes) => {
                        if self.content.fill_stream_bytes(start, &bytes) {
                            self.held += 1;
                        }
                        let lanes = self.lanes.entry(peer).or_insert(1);
                        *lanes = (*lanes + 1).min(IN_FLIGHT_PER_PEER);
                    }
                    Err(_) => {
                        // A wrong slice: this peer is asked nothing more.
                        self.peers.retain(|p| *p != peer);
                        self.waiting.insert(index);
                    }
                }
            }
            Answer::Failed if self.forgive(peer) => {
                self.waiting.insert(index);
            }
            Answer::Missing | Answer::Failed => {
                self.tried.entry(index).or_default().insert(peer);
                self.waiting.insert(index);
            }
        }
        if self.held == self.slices.len() {
            let empty = ChainState::genesis(Vec::new());
            return Progress::Done(std::mem::replace(&mut self.content, empty));
        }
        let stuck = self.waiting.iter().any(|s| {
            let tried = self.tried.get(s);
            self.peers
                .iter()
                .all(|p| tried.is_some_and(|t| t.contains(p)))
        });
        if stuck && self.asked.is_empty() {
            return Progress::Failed;
        }
        Progress::Going
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::slices::{Outboard, SLICE_LEN};

    fn head(hash: Digest) -> Head {
        Head {
            round: 3,
            base: hash,
            chain_tokens: 10,
            last_contributors: 2,
        }
    }

    /// What a peer does with a slice request.
    enum Says {
        Slice(Vec<u8>),
        Missing,
        Fails,
    }

    /// Answers each batch of requests: `answer` says what a peer does with
    /// a slice. Returns the result and who was asked, by batch.
    fn run(
        download: &mut Download<u64>,
        mut answer: impl FnMut(PeerId, u64, u64) -> Says,
    ) -> (Option<ChainState>, Vec<(PeerId, usize)>) {
        let mut next = 0u64;
        let mut log = Vec::new();
        for batch in 0..1000 {
            let mut sent = Vec::new();
            download.pump(|peer, lane, start, len| {
                next += 1;
                // No two requests in flight on one peer's lane.
                assert!(!sent.iter().any(|&(_, p, l, _, _)| p == peer && l == lane));
                sent.push((next, peer, lane, start, len));
                Some(next)
            });
            if sent.is_empty() {
                return (None, log);
            }
            for (key, peer, _, start, len) in sent {
                log.push((peer, batch));
                let says = answer(peer, start, len);
                let answer = match &says {
                    Says::Slice(slice) => Answer::Slice(slice),
                    Says::Missing => Answer::Missing,
                    Says::Fails => Answer::Failed,
                };
                match download.answer(key, answer) {
                    Progress::Done(state) => return (Some(state), log),
                    Progress::Failed => return (None, log),
                    Progress::Going => {}
                }
            }
        }
        panic!("no end");
    }

    #[test]
    fn slices_come_from_every_peer_and_a_liar_is_dropped() {
        // The parameters end inside a slice, so one slice fills both
        // halves.
        let params = (5 * SLICE_LEN as usize + 40) / 8;
        let state = ChainState {
            params: (0..params).map(|i| (i % 249) as f32 - 0.5).collect(),
            momentum: (0..params).map(|i| (i % 13) as f32 * 1e-3).collect(),
        };
        let served = Outboard::of(state.to_bytes()).unwrap();
        let [a, b, liar] = [PeerId::random(), PeerId::random(), PeerId::random()];
        let mut download = Download::new(head(served.hash()), params, a, [b, liar]);
        let (fetched, log) = run(&mut download, |peer, start, len| {
            let mut slice = served.slice(start, len).unwrap();
            if peer == liar {
                let last = slice.len() - 1;
                slice[last] ^= 1;
            }
            Says::Slice(slice)
        });
        assert_eq!(fetched, Some(state));
        let asked: HashSet<PeerId> = log.iter().map(|(p, _)| *p).collect();
        assert_eq!(asked, HashSet::from([a, b, liar]));
        // The liar was asked in the first batch, before it answered, and
        // never again.
        assert!(log.iter().any(|(p, _)| *p == liar));
        assert!(log.iter().all(|(p, batch)| *p != liar || *batch == 0));
    }

    #[test]
    fn a_slice_nobody_has_fails_the_download() {
        let params = 3 * SLICE_LEN as usize / 8;
        let served = Outboard::of(ChainState::genesis(vec![7.0; params]).to_bytes()).unwrap();
        let [a, b] = [PeerId::random(), PeerId::random()];
        let mut download = Download::new(head(served.hash()), params, a, [b]);
        let (fetched, _) = run(&mut download, |_, start, len| match start {
            SLICE_LEN => Says::Missing,
            _ => Says::Slice(served.slice(start, len).unwrap()),
        });
        assert_eq!(fetched, None);
    }

    #[test]
    fn a_peer_s_lanes_open_one_per_slice_and_its_failures_are_forgiven_a_few_times() {
        let params = 12 * SLICE_LEN as usize / 8;
        let state = ChainState::genesis((0..params).map(|i| i as f32).collect());
        let served = Outboard::of(state.to_bytes()).unwrap();
        let only = PeerId::random();
        // Each slice fails once, three in all, then comes.
        let mut failed = HashSet::new();
        let mut download = Download::new(head(served.hash()), params, only, []);
        let (fetched, log) = run(&mut download, |_, start, len| {
            if failed.len() < FAILURES_PER_PEER && failed.insert(start) {
                return Says::Fails;
            }
            Says::Slice(served.slice(start, len).unwrap())
        });
        assert_eq!(fetched, Some(state));
        let per_batch: Vec<usize> = (0..=log.last().unwrap().1)
            .map(|batch| log.iter().filter(|(_, b)| *b == batch).count())
            .collect();
        // One lane at first, and again after each failure; one more for
        // each slice that comes. Slice 0 fails, then comes; 1 and 2 fail
        // together (the third failure, still forgiven), then come on one
        // lane and two; the rest come on four lanes a batch.
        assert_eq!(per_batch, [1, 1, 2, 1, 2, 4, 4]);
        // One failure more and the peer is not asked that slice again.
        let mut download = Download::new(head(served.hash()), params, only, []);
        let mut failures = 0;
        let (fetched, _) = run(&mut download, |_, start, len| {
            if failures <= FAILURES_PER_PEER {
                failures += 1;
                return Says::Fails;
            }
            Says::Slice(served.slice(start, len).unwrap())
        });
        assert_eq!(fetched, None);
    }
}
