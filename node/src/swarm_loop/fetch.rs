//! The fetch protocol's side of the event loop: serving payloads and
//! checkpoint slices, taking fetched payloads, and downloading a heavier
//! chain's checkpoint in slices from several peers to adopt it.

use std::sync::Arc;

use libp2p::PeerId;
use p2ptrain_protocol::{codec, Digest};

use super::answers;
use super::download::{Download, Progress};
use super::{Node, NodeError, NodeEvent};
use crate::chain::ChainState;
use crate::engine::{Head, Input};
use crate::net::codec::{FetchRequest, FetchResponse};
use crate::net::fetch::{FetchAnswer, FetchId, InboundFetch};
use crate::net::{peer_id, peer_key};

impl Node {
    /// Answers a peer's request from what this node holds: at once from
    /// memory, off the event loop for what is read from disk or cut from a
    /// checkpoint (see [`super::answers`] and [`super::slicing`]).
    pub(super) fn on_inbound_fetch(&mut self, inbound: InboundFetch) {
        match inbound.request {
            FetchRequest::CheckpointSlice { .. } => self.serve_slice(inbound),
            FetchRequest::Record(_) | FetchRequest::StoredPayload(_) => {
                let (data, request) = (self.data.clone(), inbound.request);
                self.answers.start(inbound.peer, inbound, move || {
                    answers::stored_answer(&data, request)
                });
            }
            FetchRequest::Payload(id) => {
                let response = self.serve_payload(id);
                self.respond(inbound, response);
            }
            FetchRequest::RunManifest(run) => {
                let response = self.serve_manifest(run);
                self.respond(inbound, response);
            }
        }
    }

    /// Sends `response` to the peer that asked, counting it and its bytes.
    pub(super) fn respond(&mut self, inbound: InboundFetch, response: FetchResponse) {
        let sent = match &response {
            FetchResponse::Found { header, body } => header.len() + body.len(),
            FetchResponse::Missing => 0,
        };
        let found = matches!(response, FetchResponse::Found { .. });
        self.status.send_modify(|s| {
            s.answered += 1;
            s.served += u64::from(found);
            s.bytes_out += sent as u64;
        });
        inbound.respond(response);
    }

    /// Takes the answer to one of this node's requests: a payload for the
    /// engine, a checkpoint slice for the download, or a record for the
    /// backfill or a probe.
    pub(super) async fn on_fetch_answer(&mut self, answer: FetchAnswer) -> Result<(), NodeError> {
        let response = answer.result.ok();
        if let Some(FetchResponse::Found { header, body }) = &response {
            self.count_bytes(header.len() + body.len(), 0);
        }
        if let Some(id) = self.fetches.remove(&answer.id) {
            let input = match response {
                Some(FetchResponse::Found { header, body }) => match codec::decode(&header) {
                    Ok(contribution) => Input::PayloadArrived {
                        contribution,
                        bytes: body,
                    },
                    Err(_) => Input::FetchFailed { id },
                },
                Some(FetchResponse::Missing) | None => Input::FetchFailed { id },
            };
            return self.feed(input).await;
        }
        let body = match &response {
            Some(FetchResponse::Found { body, .. }) => Some(&body[..]),
            Some(FetchResponse::Missing) | None => None,
        };
        if self.is_probe(&answer.id) {
            self.on_probe(answer.id, body).await
        } else if self.backfill_asks.contains_key(&answer.id) {
            self.on_backfill(answer.id, body).await
        } else {
            self.on_slice(answer.id, body).await
        }
    }

    /// The answer to a request for payload `id` of the current round,
    /// with its signed contribution.
    fn serve_payload(&self, id: Digest) -> FetchResponse {
        let found = self.engine.payload(&id).and_then(|(signed, body)| {
            let header = codec::encode(&signed).ok()?;
            Some(FetchResponse::Found { header, body })
        });
        found.unwrap_or(FetchResponse::Missing)
    }

    /// The answer to a request for run manifest `run`: this node's, if it
    /// is that one.
    fn serve_manifest(&self, run: Digest) -> FetchResponse {
        let manifest = codec::encode(&self.manifest).ok();
        match manifest.filter(|bytes| Digest::of(bytes) == run) {
            Some(bytes) => FetchResponse::Found {
                header: Vec::new(),
                body: Arc::from(bytes),
            },
            None => FetchResponse::Missing,
        }
    }

    /// Starts downloading `head`'s checkpoint, named by `from`'s commit,
    /// from `from` and every connected peer of this run; the engine's input
    /// if it cannot start.
    pub(super) fn start_download(
        &mut self,
        head: Head,
        from: p2ptrain_protocol::PeerKey,
    ) -> Option<Input> {
        if self
            .download
            .as_ref()
            .is_some_and(|d| d.hash() == head.base)
        {
            return None;
        }
        let Some(from) = peer_id(&from) else {
            return Some(Input::CheckpointUnavailable {
                result: head.base,
                from,
            });
        };
        let peers = self.run_peers();
        let params = self.state.params.len();
        self.download = Some(Download::new(head, params, from, peers));
        self.pump_download();
        None
    }

    /// The connected peers of this run (subscribed to its announcements):
    /// those that may hold its checkpoints and records.
    pub(super) fn run_peers(&self) -> Vec<PeerId> {
        let members = self.engine.members();
        self.swarm
            .connected_peers()
            .filter(|peer| peer_key(peer).is_some_and(|key| members.contains(&key)))
            .copied()
            .collect()
    }

    /// Sends the download's next slice requests.
    pub(super) fn pump_download(&mut self) {
        let Some(download) = &mut self.download else {
            return;
        };
        let fetcher = &mut self.fetcher;
        let hash = download.hash();
        download.pump(|peer, start, len| {
            Some(fetcher.send(peer, FetchRequest::CheckpointSlice { hash, start, len }))
        });
        let progress = download.progress();
        self.status.send_modify(|s| s.downloading = Some(progress));
    }

    /// Takes a slice (or the lack of one) for the download.
    async fn on_slice(&mut self, request: FetchId, slice: Option<&[u8]>) -> Result<(), NodeError> {
        let Some(download) = self.download.as_mut().filter(|d| d.owns(&request)) else {
            return Ok(());
        };
        match download.answer(request, slice) {
            Progress::Going => self.pump_download(),
            Progress::Done(state) => {
                let Some(download) = self.download.take() else {
                    return Ok(());
                };
                self.status.send_modify(|s| s.downloading = None);
                self.adopt(download.head, download.from, state).await?;
            }
            Progress::Failed => {
                let Some(download) = self.download.take() else {
                    return Ok(());
                };
                self.status.send_modify(|s| s.downloading = None);
                if let Some(from) = peer_key(&download.from) {
                    self.feed(Input::CheckpointUnavailable {
                        result: download.hash(),
                        from,
                    })
                    .await?;
                }
            }
        }
        Ok(())
    }

    /// Takes a downloaded checkpoint (every slice already checked against
    /// its hash) and trains from it.
    async fn adopt(
        &mut self,
        head: Head,
        from: PeerId,
        state: ChainState,
    ) -> Result<(), NodeError> {
        if state.hash() != head.base {
            if let Some(from) = peer_key(&from) {
                self.feed(Input::CheckpointUnavailable {
                    result: head.base,
                    from,
                })
                .await?;
            }
            return Ok(());
        }
        self.set_state(Arc::new(state), head.base, true).await?;
        self.round_done(head, None);
        // This node's records from the adopted round on are of the branch
        // it left; those below are checked as the backfill reaches them.
        // Removed once the writes under way have landed, which a late one
        // would otherwise undo.
        self.finish_round_writes().await?;
        self.data.remove_records_from(head.round)?;
        self.start_backfill(Some(from), head);
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
