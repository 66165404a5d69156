//! Where the run's other peers stand: the round each connected member was
//! last seen working on, from what it signed, or from a record of the round
//! before it that it sent when asked. A node that has trained all
//! the rounds it was asked for stays up while a member is behind it (a
//! joiner still downloading the checkpoint, say): once every peer that could
//! serve that member has gone, it could never catch up.

use p2ptrain_protocol::PeerKey;

use super::validate::Checker;
use super::Engine;

impl<C: Checker> Engine<C> {
    /// The connected members of the run not yet seen at `round` (this
    /// peer's, say), in key order. A member is seen at a round by a valid
    /// contribution to it, a valid commit of the round before it, or
    /// [`Input::HoldsHead`](super::Input::HoldsHead); one not heard from
    /// since it connected is behind.
    ///
    /// A member that reached the round by adopting a checkpoint, and has
    /// neither committed nor contributed since, counts until the host
    /// learns that it holds the head: nothing it signed says where it is.
    pub fn members_behind(&self, round: u64) -> impl Iterator<Item = PeerKey> + '_ {
        self.members
            .iter()
            .filter(move |peer| self.seen_at.get(*peer).is_none_or(|seen| *seen < round))
            .copied()
    }

    /// Notes that `peer` showed itself working on `round` (a contribution
    /// to it, a commit of the round before, or the head of `round` held). Only
    /// members are noted, so the notes are never more than the connected
    /// peers.
    pub(super) fn saw_at(&mut self, peer: PeerKey, round: u64) {
        if self.members.contains(&peer) {
            let seen = self.seen_at.entry(peer).or_insert(round);
            *seen = (*seen).max(round);
        }
    }
}
