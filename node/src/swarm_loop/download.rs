//! A checkpoint download: the slices of one checkpoint fetched from several
//! peers at once, each checked as it arrives against the hash that the
//! signed commits name ([`crate::net::slices`]).
//!
//! The download itself does no I/O: it says which slice to ask of which
//! peer, and takes the answers. A slice that a peer lacks, fails to send or
//! sends wrong goes to another peer; a peer that sent a wrong slice is asked
//! nothing more. The download fails when some slice is left with no peer
//! to ask.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::Hash;

use libp2p::PeerId;
use p2ptrain_protocol::Digest;

use crate::chain::ChainState;
use crate::engine::Head;
use crate::net::slices;

/// Slice requests in flight per peer at most: as many as the peer's
/// stream carries before the first is answered, so that over a long round
/// trip the peer always has the next request at hand.
const IN_FLIGHT_PER_PEER: usize = crate::net::fetch::PIPELINE_DEPTH;

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
    /// Requests in flight: slice and peer.
    asked: HashMap<K, (usize, PeerId)>,
    /// Peers that may be asked, in order.
    peers: Vec<PeerId>,
    /// Peers that could not give a slice.
    tried: HashMap<usize, HashSet<PeerId>>,
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

    /// The next requests to send: `(peer, start, len)`. `send` returns the
    /// request's key (its id), by which its answer comes back.
    pub fn pump(&mut self, mut send: impl FnMut(PeerId, u64, u64) -> Option<K>) {
        let waiting: Vec<usize> = self.waiting.iter().copied().collect();
        for slice in waiting {
            let Some(peer) = self.pick_peer(slice) else {
                continue;
            };
            let (start, len) = self.slices[slice];
            if let Some(key) = send(peer, start, len) {
                self.waiting.remove(&slice);
                self.asked.insert(key, (slice, peer));
            }
        }
    }

    /// A peer for `slice`: round robin over those with room that have not
    /// failed it.
    fn pick_peer(&mut self, slice: usize) -> Option<PeerId> {
        let busy = |peer: &PeerId| self.asked.values().filter(|(_, p)| p == peer).count();
        let tried = self.tried.get(&slice);
        for offset in 0..self.peers.len() {
            let peer = self.peers[(self.next_peer + offset) % self.peers.len()];
            if busy(&peer) < IN_FLIGHT_PER_PEER && !tried.is_some_and(|t| t.contains(&peer)) {
                self.next_peer = (self.next_peer + offset + 1) % self.peers.len();
                return Some(peer);
            }
        }
        None
    }

    /// Whether `key` is one of this download's requests.
    pub fn owns(&self, key: &K) -> bool {
        self.asked.contains_key(key)
    }

    /// Takes the answer to request `key`: the slice, or `None` when the
    /// peer lacked it or the request failed.
    pub fn answer(&mut self, key: K, slice: Option<&[u8]>) -> Progress {
        let Some((index, peer)) = self.asked.remove(&key) else {
            return Progress::Going;
        };
        let (start, len) = self.slices[index];
        let total = self.content.byte_len();
        match slice.map(|s| slices::verify_slice(&self.head.base, total, start, len, s)) {
            Some(Ok(bytes)) => {
                if self.content.fill_stream_bytes(start, &bytes) {
                    self.held += 1;
                }
            }
            Some(Err(_)) => {
                // A wrong slice: this peer is asked nothing more.
                self.peers.retain(|p| *p != peer);
                self.waiting.insert(index);
            }
            None => {
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

    /// Answers each batch of requests: `answer` says what a peer sends for
    /// a slice. Returns the result and who was asked, by batch.
    fn run(
        download: &mut Download<u64>,
        mut answer: impl FnMut(PeerId, u64, u64) -> Option<Vec<u8>>,
    ) -> (Option<ChainState>, Vec<(PeerId, usize)>) {
        let mut next = 0u64;
        let mut log = Vec::new();
        for batch in 0..1000 {
            let mut sent = Vec::new();
            download.pump(|peer, start, len| {
                next += 1;
                sent.push((next, peer, start, len));
                Some(next)
            });
            if sent.is_empty() {
                return (None, log);
            }
            for (key, peer, start, len) in sent {
                log.push((peer, batch));
                match download.answer(key, answer(peer, start, len).as_deref()) {
                    Progress::Done(state) => return (Some(state), log),
                    Progress::Failed => return (None, log),
                    Progress::Going => {}
                }
            }
        }
        panic!("no end");
    }

    #[test]
    fn slices_come_from_every_peer_and_a_liar_is_dropped() -> crate::TestResult {
        // The parameters end inside a slice, so one slice fills both
        // halves.
        let params = (5 * SLICE_LEN as usize + 40) / 8;
        let state = ChainState {
            params: (0..params).map(|i| (i % 249) as f32 - 0.5).collect(),
            momentum: (0..params).map(|i| (i % 13) as f32 * 1e-3).collect(),
        };
        let served = Outboard::of(state.to_bytes())?;
        let [a, b, liar] = [PeerId::random(), PeerId::random(), PeerId::random()];
        let mut download = Download::new(head(served.hash()), params, a, [b, liar]);
        let (fetched, log) = run(&mut download, |peer, start, len| {
            let mut slice = served.slice(start, len).ok()?;
            if peer == liar {
                let last = slice.len() - 1;
                slice[last] ^= 1;
            }
            Some(slice)
        });
        assert_eq!(fetched, Some(state));
        let asked: HashSet<PeerId> = log.iter().map(|(p, _)| *p).collect();
        assert_eq!(asked, HashSet::from([a, b, liar]));
        // The liar was asked in the first batch, before it answered, and
        // never again.
        assert!(log.iter().any(|(p, _)| *p == liar));
        assert!(log.iter().all(|(p, batch)| *p != liar || *batch == 0));
        Ok(())
    }

    #[test]
    fn a_slice_nobody_has_fails_the_download() -> crate::TestResult {
        let params = 3 * SLICE_LEN as usize / 8;
        let served = Outboard::of(ChainState::genesis(vec![7.0; params]).to_bytes())?;
        let [a, b] = [PeerId::random(), PeerId::random()];
        let mut download = Download::new(head(served.hash()), params, a, [b]);
        let (fetched, _) = run(&mut download, |_, start, len| {
            (start != SLICE_LEN)
                .then(|| served.slice(start, len).ok())
                .flatten()
        });
        assert_eq!(fetched, None);
        Ok(())
    }
}
