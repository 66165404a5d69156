//! What peers say in a round: contributions, commits, and the record of both.

use bincode::de::Decoder;
use bincode::error::DecodeError;
use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::signed::{Signable, Signed, SignedError};
use crate::{CompressionSettings, Digest, PeerKey};

/// Where a contribution's compressed pseudo-gradient is, and how to check it.
#[derive(Debug, Clone, Copy, PartialEq, Encode, Decode, Serialize, Deserialize)]
pub struct PayloadRef {
    /// blake3 of the encoded payload.
    pub hash: Digest,
    /// Length of the encoded payload in bytes.
    pub len: u64,
}

/// One peer's announcement of its pseudo-gradient for a round.
///
/// Small: it names the payload by hash; the payload bytes travel separately.
#[derive(Debug, Clone, PartialEq, Encode, Decode, Serialize, Deserialize)]
pub struct Contribution {
    /// The run's id ([`RunManifest::id`](crate::RunManifest::id)).
    pub run: Digest,
    /// The round this update is for.
    pub round: u64,
    /// The checkpoint the author trained from.
    pub base: Digest,
    /// The author, who must be the signer.
    pub author: PeerKey,
    /// Tokens trained for this update; the aggregation weight.
    pub tokens: u64,
    /// The compressed pseudo-gradient.
    pub payload: PayloadRef,
    /// How the payload was compressed.
    pub compression: CompressionSettings,
}

crate::impl_message!(Contribution, max_len = 512);

impl Signable for Contribution {
    const DOMAIN: &'static [u8] = b"p2ptrain/v1/contribution\0";

    fn claimed_signer(&self) -> Option<PeerKey> {
        Some(self.author)
    }
}

crate::impl_message!(Signed<Contribution>, max_len = 512 + 128);

/// Two contributions signed by one key for one round and base: proof that
/// the key equivocated, which any peer can check. Peers pass it on so that
/// every peer ignores the key, not only those that heard both.
///
/// ```
/// use p2ptrain_protocol::*;
///
/// let key = SigningKey::from_bytes(&[5; 32]);
/// let contribution = |tokens| {
///     let c = Contribution {
///         run: Digest::of(b"run"),
///         round: 3,
///         base: Digest::of(b"base"),
///         author: PeerKey::from(&key),
///         tokens,
///         payload: PayloadRef { hash: Digest::of(b"p"), len: 1 },
///         compression: CompressionSettings::default(),
///     };
///     Signed::sign(&c, &key).unwrap()
/// };
/// let proof = Equivocation { first: contribution(10), second: contribution(20) };
/// assert_eq!(proof.proven().map(|c| (c.author, c.round)), Some((PeerKey::from(&key), 3)));
/// let same = Equivocation { first: contribution(10), second: contribution(10) };
/// assert!(same.proven().is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Equivocation {
    /// One contribution.
    pub first: Signed<Contribution>,
    /// Another, by the same key for the same run, round and base.
    pub second: Signed<Contribution>,
}

crate::impl_message!(Equivocation, max_len = 2 * (512 + 128) + 16);

impl Equivocation {
    /// The first contribution, when the two prove that its author
    /// equivocated: both signatures hold, the contributions differ, and
    /// they share author, run, round and base.
    pub fn proven(&self) -> Option<Contribution> {
        let first = self.first.verify().ok()?;
        let second = self.second.verify().ok()?;
        let alike = (first.author, first.run, first.round, first.base)
            == (second.author, second.run, second.round, second.base);
        (alike && self.first.id() != self.second.id()).then_some(first)
    }
}

/// A set of content ids, strictly ascending: the canonical order.
///
/// Decoding refuses ids out of order or repeated, so one set has one encoding.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Encode, Serialize, Deserialize)]
#[serde(try_from = "Vec<Digest>")]
pub struct IdSet(Vec<Digest>);

impl IdSet {
    /// Sorts and deduplicates `ids`.
    pub fn new(mut ids: Vec<Digest>) -> Self {
        ids.sort_unstable();
        ids.dedup();
        Self(ids)
    }

    /// The ids, ascending.
    pub fn as_slice(&self) -> &[Digest] {
        &self.0
    }

    /// Whether `id` is in the set.
    pub fn contains(&self, id: &Digest) -> bool {
        self.0.binary_search(id).is_ok()
    }

    /// The number of ids.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The error for ids that are not strictly ascending.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ids must be strictly ascending")]
pub struct UnsortedIds;

impl TryFrom<Vec<Digest>> for IdSet {
    type Error = UnsortedIds;

    fn try_from(ids: Vec<Digest>) -> Result<Self, Self::Error> {
        if ids.windows(2).all(|pair| pair[0] < pair[1]) {
            Ok(Self(ids))
        } else {
            Err(UnsortedIds)
        }
    }
}

impl<Context> Decode<Context> for IdSet {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        Self::try_from(Vec::<Digest>::decode(decoder)?)
            .map_err(|_| DecodeError::Other("ids must be strictly ascending"))
    }
}

bincode::impl_borrow_decode!(IdSet);

/// A peer's statement of which contributions it applied in a round and the
/// checkpoint that resulted.
#[derive(Debug, Clone, PartialEq, Encode, Decode, Serialize, Deserialize)]
pub struct Commit {
    /// The run's id.
    pub run: Digest,
    /// The round closed.
    pub round: u64,
    /// The checkpoint the round started from.
    pub base: Digest,
    /// The peer committing, who must be the signer.
    pub committer: PeerKey,
    /// Ids of the contributions applied.
    pub contributions: IdSet,
    /// The checkpoint after the outer step.
    pub result: Digest,
    /// Tokens contributed since genesis along this chain, this round's
    /// included: the weight fork choice compares.
    pub chain_tokens: u64,
}

crate::impl_message!(Commit, max_len = 1 << 20);

impl Signable for Commit {
    const DOMAIN: &'static [u8] = b"p2ptrain/v1/commit\0";

    fn claimed_signer(&self) -> Option<PeerKey> {
        Some(self.committer)
    }
}

crate::impl_message!(Signed<Commit>, max_len = (1 << 20) + 128);

/// One round of the chain: a signed commit and the signed contributions it
/// names, in the commit's order. Replaying records from genesis, with the
/// payloads, recomputes every checkpoint.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct RoundRecord {
    /// The commit that closed the round.
    pub commit: Signed<Commit>,
    /// The contributions it applied, ordered as its id set.
    pub contributions: Vec<Signed<Contribution>>,
}

crate::impl_message!(RoundRecord, max_len = 16 << 20);

/// Why a round record does not hold together.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The commit's signature or body is bad.
    #[error("commit: {0}")]
    Commit(#[source] SignedError),
    /// A contribution's signature or body is bad.
    #[error("contribution {index}: {error}")]
    Contribution {
        /// Position in the record.
        index: usize,
        /// What was wrong.
        error: SignedError,
    },
    /// The contributions carried are not exactly those the commit names.
    #[error("contributions carried do not match the ids the commit names")]
    IdsMismatch,
    /// A contribution is for another run, round or base than the commit.
    #[error("contribution {index} is for another run, round or base than its commit")]
    WrongRound {
        /// Position in the record.
        index: usize,
    },
}

impl RoundRecord {
    /// Checks every signature and that the contributions are exactly the
    /// commit's, for its run, round and base. Returns the decoded values.
    pub fn verify(&self) -> Result<(Commit, Vec<Contribution>), RecordError> {
        let commit = self.commit.verify().map_err(RecordError::Commit)?;
        let ids = self.contributions.iter().map(Signed::id);
        if !ids.eq(commit.contributions.as_slice().iter().copied()) {
            return Err(RecordError::IdsMismatch);
        }
        let mut contributions = Vec::with_capacity(self.contributions.len());
        for (index, signed) in self.contributions.iter().enumerate() {
            let contribution = signed
                .verify()
                .map_err(|error| RecordError::Contribution { index, error })?;
            let same_round = contribution.run == commit.run
                && contribution.round == commit.round
                && contribution.base == commit.base;
            if !same_round {
                return Err(RecordError::WrongRound { index });
            }
            contributions.push(contribution);
        }
        Ok((commit, contributions))
    }
}
