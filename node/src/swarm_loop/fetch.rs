//! The fetch protocol's side of the event loop: serving payloads and
//! checkpoints, taking fetched ones, adopting a heavier chain's checkpoint.

use std::sync::Arc;

use libp2p::request_response::{self, Message};
use p2ptrain_protocol::codec;

use super::{Node, NodeError, NodeEvent};
use crate::chain::ChainState;
use crate::engine::{Head, Input};
use crate::net::codec::{FetchRequest, FetchResponse};

impl Node {
    pub(super) async fn on_fetch(
        &mut self,
        event: request_response::Event<FetchRequest, FetchResponse>,
    ) -> Result<(), NodeError> {
        match event {
            request_response::Event::Message {
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let response = self.serve(request);
                if let FetchResponse::Found { header, body } = &response {
                    self.count_bytes(0, header.len() + body.len());
                }
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .fetch
                    .send_response(channel, response);
            }
            request_response::Event::Message {
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let FetchResponse::Found { header, body } = &response {
                    self.count_bytes(header.len() + body.len(), 0);
                }
                if let Some(id) = self.fetches.remove(&request_id) {
                    let input = match response {
                        FetchResponse::Found { header, body } => match codec::decode(&header) {
                            Ok(contribution) => Input::PayloadArrived {
                                contribution,
                                bytes: Arc::from(body),
                            },
                            Err(_) => Input::FetchFailed { id },
                        },
                        FetchResponse::Missing => Input::FetchFailed { id },
                    };
                    self.feed(input).await?;
                } else if let Some(head) = self.checkpoints.remove(&request_id) {
                    self.adopt(head, response).await?;
                }
            }
            request_response::Event::OutboundFailure { request_id, .. } => {
                if let Some(id) = self.fetches.remove(&request_id) {
                    self.feed(Input::FetchFailed { id }).await?;
                }
                self.checkpoints.remove(&request_id);
            }
            _ => {}
        }
        Ok(())
    }

    fn serve(&self, request: FetchRequest) -> FetchResponse {
        match request {
            FetchRequest::Payload(id) => match self.engine.payload(&id) {
                Some((signed, bytes)) => match codec::encode(&signed) {
                    Ok(header) => FetchResponse::Found {
                        header,
                        body: bytes.to_vec(),
                    },
                    Err(_) => FetchResponse::Missing,
                },
                None => FetchResponse::Missing,
            },
            FetchRequest::Checkpoint(hash) => {
                let state = if self.state_hash == hash {
                    Some(&self.state)
                } else {
                    self.tentative.get(&hash)
                };
                match state {
                    Some(state) => FetchResponse::Found {
                        header: Vec::new(),
                        body: state.to_bytes(),
                    },
                    None => FetchResponse::Missing,
                }
            }
        }
    }

    /// Takes a fetched checkpoint if it hashes to what the commit named.
    async fn adopt(&mut self, head: Head, response: FetchResponse) -> Result<(), NodeError> {
        let FetchResponse::Found { body, .. } = response else {
            return Ok(());
        };
        let Ok(state) = ChainState::from_bytes(&body, self.state.params.len()) else {
            return Ok(());
        };
        if state.hash() != head.base {
            return Ok(());
        }
        self.set_state(Arc::new(state), head.base, true).await?;
        self.round_done(head, None);
        let _ = self
            .events
            .send(NodeEvent::Adopted {
                round: head.round.saturating_sub(1),
                checkpoint: head.base,
            })
            .await;
        self.feed(Input::CheckpointAdopted(head)).await
    }
}
