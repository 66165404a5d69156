//! The swarm's events, turned into engine inputs and reports.

use libp2p::swarm::{DialError, ListenError, SwarmEvent};
use libp2p::{allow_block_list, gossipsub, mdns, PeerId};

use super::error::{dial_failure, other_key};
use super::{Node, NodeError, NodeEvent};
use crate::engine::Input;
use crate::net::{announced_run, peer_key, BehaviourEvent};

impl Node {
    pub(super) async fn refused(&mut self, peer: &PeerId) {
        if let Some(key) = peer_key(peer) {
            self.report(NodeEvent::Refused(key)).await;
        }
    }

    /// A peer subscribed to a topic. To this run's announcements: it is a
    /// member of the swarm from now on (the round waits for its
    /// contribution, a download and the records' backfill ask it too), and
    /// it hears this round's announcement again, which went out before it
    /// was listening. To its commits: it hears this node's last commit
    /// again, and so where the chain stands. A connected peer that never subscribes (another
    /// run's, or another libp2p program's, found by mDNS or Kademlia) is
    /// never waited for; another run's is named.
    async fn on_subscribed(
        &mut self,
        peer: PeerId,
        topic: &gossipsub::TopicHash,
    ) -> Result<(), NodeError> {
        let Some(key) = peer_key(&peer) else {
            return Ok(());
        };
        if *topic == self.topics.announce.hash() {
            if let Some(signed) = self.engine.own_announcement() {
                self.publish(&self.topics.announce.clone(), &signed);
            }
            self.feed(Input::PeerSeen(key)).await?;
            // Records of rounds adopted before a restart, asked of the
            // first peer of this run met.
            if !self.backfill_checked && self.backfill.is_none() {
                self.backfill_checked = true;
                self.start_backfill(Some(peer), self.engine.head());
            }
            if let Some(download) = &mut self.download {
                download.add_peer(peer);
                self.pump_download();
            }
        } else if *topic == self.topics.commit.hash() {
            if let Some(signed) = self.last_commit.clone() {
                self.publish(&self.topics.commit.clone(), &signed);
            }
        } else if let Some(run) = announced_run(topic.as_str()) {
            let run = run.to_owned();
            self.report(NodeEvent::OtherRun { peer: key, run }).await;
        }
        Ok(())
    }

    pub(super) async fn on_swarm_event(
        &mut self,
        event: SwarmEvent<BehaviourEvent>,
    ) -> Result<(), NodeError> {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                let _ = self.events.send(NodeEvent::Listening(address)).await;
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                self.on_connection(peer_id, connection_id, endpoint.is_relayed());
                if let Some(key) = peer_key(&peer_id) {
                    if num_established.get() == 1 {
                        self.report(NodeEvent::PeerConnected(key)).await;
                    }
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                self.on_connection_closed(peer_id, connection_id);
                if num_established == 0 {
                    self.fetcher.forget(&peer_id);
                }
                // The last connection to the peer: it left.
                if let Some(key) = peer_key(&peer_id).filter(|_| num_established == 0) {
                    self.report(NodeEvent::PeerLeft(key)).await;
                    self.feed(Input::PeerGone(key)).await?;
                }
            }
            SwarmEvent::IncomingConnectionError {
                peer_id: Some(peer),
                error: ListenError::Denied { cause },
                ..
            } if cause
                .downcast_ref::<allow_block_list::NotAllowed>()
                .is_some() =>
            {
                self.refused(&peer).await;
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } if other_key(&error) => {
                self.report(NodeEvent::OtherSwarmKey(send_back_addr)).await;
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => match (peer_id, error) {
                (Some(peer), DialError::Denied { cause })
                    if cause
                        .downcast_ref::<allow_block_list::NotAllowed>()
                        .is_some() =>
                {
                    self.refused(&peer).await;
                }
                (_, error) => {
                    let told = dial_failure(&error, self.private);
                    self.report(NodeEvent::DialFailed(told)).await
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                self.dial_discovered(found);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => {
                self.on_gossip(message_id, propagation_source, message)
                    .await?
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed {
                peer_id,
                topic,
            })) => self.on_subscribed(peer_id, &topic).await?,
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Unsubscribed {
                peer_id,
                topic,
            })) if topic == self.topics.announce.hash() => {
                if let Some(key) = peer_key(&peer_id) {
                    self.feed(Input::PeerGone(key)).await?;
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(event)) => self.on_identify(event),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => self.on_kad(event),
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(event)) => self.on_autonat(event).await,
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(event)) => self.on_dcutr(event).await,
            _ => {}
        }
        Ok(())
    }
}
