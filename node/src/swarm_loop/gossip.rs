//! Gossip as it arrives: each message is judged before gossipsub passes it
//! on, so that a node relays only what it would act on itself.
//!
//! - A message that does not decode, or whose signature or run is wrong,
//!   is rejected: not relayed (gossipsub's verdict for an invalid message,
//!   which its peer scoring would count against the relaying peer).
//! - An announcement a peer repeats after the round that applied it, and a
//!   proof of equivocation about a key this node has no stake in (see
//!   [`Engine::knows`]) or has already caught, are ignored: not relayed.
//! - Everything else is accepted and relayed.
//!
//! What reaches the engine is unchanged: every message that decodes, but
//! for the repeats and the ignored proofs, which it would drop unread.
//! Without the judging, gossipsub relayed every message that carried a
//! valid gossip signature, so one peer could spread any amount of noise
//! (proofs minted from fresh keys, say) to the whole swarm.

use libp2p::gossipsub::{self, MessageAcceptance, MessageId};
use libp2p::PeerId;
use p2ptrain_protocol::{codec, Commit, Contribution, Equivocation, Signed};

use super::{Node, NodeError};
use crate::engine::{Engine, Input};
use crate::net::{peer_key, Topics};

impl Node {
    /// A gossip message relayed by `from`: judged, the verdict reported to
    /// gossipsub, then handed to the engine.
    pub(super) async fn on_gossip(
        &mut self,
        id: MessageId,
        from: PeerId,
        message: gossipsub::Message,
    ) -> Result<(), NodeError> {
        self.count_bytes(message.data.len(), 0);
        let (verdict, input) = judge(&self.engine, &self.topics, &message);
        // A message gossipsub no longer holds (it waited too long) is
        // simply not relayed.
        let _ = self
            .swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(&id, &from, verdict);
        match input {
            Some(input) => self.feed(input).await,
            None => Ok(()),
        }
    }
}

/// Whether to relay `message`, and what the engine takes from it.
pub(super) fn judge(
    engine: &Engine,
    topics: &Topics,
    message: &gossipsub::Message,
) -> (MessageAcceptance, Option<Input>) {
    let topic = &message.topic;
    if *topic == topics.announce.hash() {
        judge_announcement(engine, message)
    } else if *topic == topics.commit.hash() {
        let Ok(signed) = codec::decode::<Signed<Commit>>(&message.data) else {
            return (MessageAcceptance::Reject, None);
        };
        let valid = signed.verify().is_ok_and(|c| c.run == engine.run());
        (acceptance(valid), Some(Input::CommitReceived(signed)))
    } else if *topic == topics.evidence.hash() {
        judge_evidence(engine, message)
    } else {
        (MessageAcceptance::Reject, None)
    }
}

fn judge_announcement(
    engine: &Engine,
    message: &gossipsub::Message,
) -> (MessageAcceptance, Option<Input>) {
    let Ok(signed) = codec::decode::<Signed<Contribution>>(&message.data) else {
        return (MessageAcceptance::Reject, None);
    };
    let source = message.source.as_ref().and_then(peer_key);
    if engine.is_late_repeat(&signed, source) {
        return (MessageAcceptance::Ignore, None);
    }
    let valid = signed.verify().is_ok_and(|c| c.run == engine.run());
    // A contribution with a bad signature still reaches the engine, which
    // counts it among the dropped.
    (acceptance(valid), Some(Input::Announced(signed)))
}

fn judge_evidence(
    engine: &Engine,
    message: &gossipsub::Message,
) -> (MessageAcceptance, Option<Input>) {
    let Ok(proof) = codec::decode::<Equivocation>(&message.data) else {
        return (MessageAcceptance::Reject, None);
    };
    let author = proof.first.signer();
    if !engine.knows(&author) || engine.is_ignored(&author) {
        return (MessageAcceptance::Ignore, None);
    }
    let valid = proof.proven().is_some_and(|c| c.run == engine.run());
    (acceptance(valid), valid.then_some(Input::Evidence(proof)))
}

fn acceptance(valid: bool) -> MessageAcceptance {
    if valid {
        MessageAcceptance::Accept
    } else {
        MessageAcceptance::Reject
    }
}

#[cfg(test)]
mod tests {
    use p2ptrain_protocol::{Digest, IdSet, PayloadRef, PeerKey, RunManifest, SigningKey};

    use super::*;
    use crate::engine::EngineConfig;
    use crate::net::topics;

    fn engine() -> Engine {
        let config =
            EngineConfig::new(RunManifest::default(), SigningKey::from_bytes(&[1; 32]), 64);
        Engine::new(config).unwrap()
    }

    fn message(topic: &gossipsub::IdentTopic, data: Vec<u8>) -> gossipsub::Message {
        gossipsub::Message {
            source: None,
            data,
            sequence_number: None,
            topic: topic.hash(),
        }
    }

    fn contribution(engine: &Engine, key: &SigningKey, tokens: u64) -> Signed<Contribution> {
        let head = engine.head();
        let c = Contribution {
            run: engine.run(),
            round: head.round,
            base: head.base,
            author: PeerKey::from(key),
            tokens,
            payload: PayloadRef {
                hash: Digest::of(b"p"),
                len: 1,
            },
            compression: RunManifest::default().compression,
        };
        Signed::sign(&c, key).unwrap()
    }

    fn verdict(engine: &Engine, message: &gossipsub::Message) -> (MessageAcceptance, bool) {
        let (acceptance, input) = judge(engine, &topics(&engine.run()), message);
        (acceptance, input.is_some())
    }

    #[test]
    fn announcements_are_relayed_when_signed_for_this_run() {
        let engine = engine();
        let topics = topics(&engine.run());
        let peer = SigningKey::from_bytes(&[2; 32]);
        let signed = contribution(&engine, &peer, 10);
        let valid = message(&topics.announce, codec::encode(&signed).unwrap());
        assert_eq!(verdict(&engine, &valid), (MessageAcceptance::Accept, true));

        // Signed by another key than the one it names: the engine counts
        // it, the swarm does not hear it from this node.
        let forged = Signed::<Contribution>::from_parts(
            signed.body().to_vec(),
            PeerKey::from(&SigningKey::from_bytes(&[3; 32])),
            *signed.signature(),
        );
        let forged = message(&topics.announce, codec::encode(&forged).unwrap());
        assert_eq!(verdict(&engine, &forged), (MessageAcceptance::Reject, true));

        let noise = message(&topics.announce, vec![7; 40]);
        assert_eq!(verdict(&engine, &noise), (MessageAcceptance::Reject, false));
        // An announcement on the commit topic is no commit.
        let elsewhere = message(&topics.commit, codec::encode(&signed).unwrap());
        assert_eq!(verdict(&engine, &elsewhere).0, MessageAcceptance::Reject);
    }

    #[test]
    fn commits_are_relayed_when_signed_for_this_run() {
        let engine = engine();
        let topics = topics(&engine.run());
        let key = SigningKey::from_bytes(&[2; 32]);
        let commit = |run| Commit {
            run,
            round: 0,
            base: engine.head().base,
            committer: PeerKey::from(&key),
            contributions: IdSet::new(Vec::new()),
            result: Digest::of(b"next"),
            chain_tokens: 0,
        };
        let ours = codec::encode(&Signed::sign(&commit(engine.run()), &key).unwrap()).unwrap();
        let ours = message(&topics.commit, ours);
        assert_eq!(verdict(&engine, &ours), (MessageAcceptance::Accept, true));
        let theirs = codec::encode(&Signed::sign(&commit(Digest::of(b"other")), &key).unwrap());
        let theirs = message(&topics.commit, theirs.unwrap());
        assert_eq!(verdict(&engine, &theirs), (MessageAcceptance::Reject, true));
    }

    #[test]
    fn proofs_are_relayed_only_about_keys_this_node_knows_and_has_not_caught() {
        let mut engine = engine();
        let topics = topics(&engine.run());
        let peer = SigningKey::from_bytes(&[2; 32]);
        let proof = |first, second| {
            let proof = Equivocation {
                first: contribution(&engine, &peer, first),
                second: contribution(&engine, &peer, second),
            };
            message(&topics.evidence, codec::encode(&proof).unwrap())
        };
        let (proof, same) = (proof(10, 20), proof(10, 10));
        // A stranger's: minted by anyone, dropped unread.
        assert_eq!(verdict(&engine, &proof), (MessageAcceptance::Ignore, false));
        engine.handle(0, Input::PeerSeen(PeerKey::from(&peer)));
        assert_eq!(verdict(&engine, &proof), (MessageAcceptance::Accept, true));
        assert_eq!(verdict(&engine, &same), (MessageAcceptance::Reject, false));
        // Caught: a second copy of the news is not relayed.
        let (_, input) = judge(&engine, &topics, &proof);
        engine.handle(0, input.unwrap());
        assert!(engine.is_ignored(&PeerKey::from(&peer)));
        assert_eq!(verdict(&engine, &proof), (MessageAcceptance::Ignore, false));
    }
}
