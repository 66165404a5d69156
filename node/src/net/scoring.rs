//! Gossipsub peer scoring, for one thing only: a peer whose messages this
//! node rejects loses score with each one, and below the graylist threshold
//! everything it sends on gossip is ignored. A message is rejected when it
//! does not decode or is not signed for the run by the key it names
//! (`swarm_loop::gossip`), which every honest peer judges alike.
//!
//! Gossipsub's other rewards and penalties stay off. In a swarm of a few
//! peers a round brings a handful of messages, so an honest peer can look
//! quiet (mesh delivery counts); and peers on one LAN, one lab NAT or one
//! machine share an address (IP colocation).
//!
//! ```
//! use p2ptrain_node::net::scoring;
//!
//! // Two rejected messages leave a peer heard; the third graylists it.
//! assert!(scoring::after_rejections(2) > scoring::thresholds().graylist_threshold);
//! assert!(scoring::after_rejections(3) < scoring::thresholds().graylist_threshold);
//! ```

use std::time::Duration;

use libp2p::gossipsub::{PeerScoreParams, PeerScoreThresholds, TopicScoreParams};

/// The score a rejected message costs, times the square of the count.
const REJECTION_WEIGHT: f64 = -10.0;

/// What is left of the rejection count after each second: half of it after
/// about 70 s.
const REJECTION_DECAY: f64 = 0.99;

/// The scoring of the whole swarm; each run's topics are added when the
/// node subscribes to them ([`topic_params`]).
pub fn params() -> PeerScoreParams {
    PeerScoreParams {
        app_specific_weight: 0.0,
        ip_colocation_factor_weight: 0.0,
        // Gossipsub's own protocol faults (a GRAFT during backoff, an
        // IWANT left unanswered) count only past a few, each decaying fast.
        behaviour_penalty_threshold: 6.0,
        decay_interval: Duration::from_secs(1),
        ..PeerScoreParams::default()
    }
}

/// Gossipsub's default thresholds: below −10 a peer gets no gossip, below
/// −50 nothing this node publishes, below −80 it is not heard at all.
pub fn thresholds() -> PeerScoreThresholds {
    PeerScoreThresholds::default()
}

/// The scoring of one of a run's topics: rejected messages only.
pub fn topic_params() -> TopicScoreParams {
    TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.0,
        first_message_deliveries_weight: 0.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: REJECTION_WEIGHT,
        invalid_message_deliveries_decay: REJECTION_DECAY,
        ..TopicScoreParams::default()
    }
}

/// A peer's score right after `count` rejected messages on one topic.
pub fn after_rejections(count: u32) -> f64 {
    let topic = topic_params();
    topic.topic_weight * topic.invalid_message_deliveries_weight * f64::from(count).powi(2)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use libp2p::futures::StreamExt;
    use libp2p::gossipsub::{self, MessageAcceptance};
    use libp2p::swarm::SwarmEvent;
    use p2ptrain_protocol::{Digest, SigningKey};

    use super::*;
    use crate::net::{build_swarm, topics, BehaviourEvent, NetConfig};

    #[test]
    fn the_parameters_are_valid() {
        params().validate().unwrap();
        thresholds().validate().unwrap();
        topic_params().validate().unwrap();
    }

    /// A peer sends three messages on the run's announce topic; the other
    /// rejects them. Its score follows `after_rejections`, and the third
    /// graylists it (after which nothing more from it would be heard).
    #[tokio::test]
    async fn rejected_messages_graylist_their_sender() {
        let config = NetConfig {
            mdns: false,
            ..NetConfig::default()
        };
        let swarm = |seed: u8| build_swarm(&SigningKey::from_bytes(&[seed; 32]), &config).unwrap();
        let (mut sender, mut judge) = (swarm(21), swarm(22));
        let topics = topics(&Digest::of(b"scoring test run"));
        for swarm in [&mut sender, &mut judge] {
            let gossip = &mut swarm.behaviour_mut().gossipsub;
            gossip.subscribe(&topics.announce).unwrap();
            gossip
                .set_topic_params(topics.announce.clone(), topic_params())
                .unwrap();
        }
        judge
            .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
            .unwrap();
        let sender_id = *sender.local_peer_id();
        let mut scores = Vec::new();
        tokio::time::timeout(Duration::from_secs(60), async {
            let mut sent = 0u8;
            while scores.len() < 3 {
                tokio::select! {
                    event = judge.select_next_some() => match event {
                        SwarmEvent::NewListenAddr { address, .. } => sender.dial(address).unwrap(),
                        SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(
                            gossipsub::Event::Message { propagation_source, message_id, .. },
                        )) => {
                            let gossip = &mut judge.behaviour_mut().gossipsub;
                            gossip.report_message_validation_result(
                                &message_id,
                                &propagation_source,
                                MessageAcceptance::Reject,
                            );
                            scores.push(gossip.peer_score(&sender_id).unwrap());
                        }
                        _ => {}
                    },
                    event = sender.select_next_some() => {
                        // Once the judge is known to listen on the topic,
                        // send the three messages.
                        let subscribed = matches!(
                            event,
                            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(
                                gossipsub::Event::Subscribed { .. }
                            ))
                        );
                        if subscribed {
                            while sent < 3 {
                                sent += 1;
                                let garbage = vec![0xEE; usize::from(sent)];
                                sender
                                    .behaviour_mut()
                                    .gossipsub
                                    .publish(topics.announce.clone(), garbage)
                                    .unwrap();
                            }
                        }
                    }
                }
            }
        })
        .await
        .expect("three messages are heard and judged within a minute");
        let graylist = thresholds().graylist_threshold;
        assert!(scores[1] > graylist, "{scores:?}");
        assert!(scores[2] < graylist, "{scores:?}");
        for (count, score) in (1..).zip(&scores) {
            // The count decays once a second: at most a few percent here.
            let expected = after_rejections(count);
            assert!(
                (score - expected).abs() <= 0.1 * expected.abs(),
                "{scores:?}"
            );
        }
    }
}
