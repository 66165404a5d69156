//! One peer's requests over one stream, several under way at once.
//!
//! A request is written as soon as it is queued, while up to
//! [`PIPELINE_DEPTH`] written before it are still unanswered; the peer
//! answers a stream's requests in the order they came, so the answers are
//! read in the order written. Over a 50 ms round trip a peer asked one
//! request at a time idles a round trip between slices; with several
//! written, the next request is already at the peer when it sends the last
//! answer.
//!
//! A stream that fails takes its unanswered requests with it: the one whose
//! answer failed is tried once more on a fresh stream (a kept stream may
//! have died with its connection since its last use, and requests only
//! read, so asking twice is harmless), and the others go again as they
//! were. A peer that lets one request time out is not asked the rest: they
//! fail with it. A peer that speaks only [`FETCH_PROTOCOL_V1`] gets a stream
//! per request, one at a time.

use std::collections::VecDeque;
use std::io;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use futures::AsyncReadExt;
use libp2p::{PeerId, Stream};
use libp2p_stream::{Control, OpenStreamError};
use tokio::sync::{mpsc, Semaphore};

use super::{FetchAnswer, FetchError, FetchId};
use crate::net::codec::{self, FetchRequest, FetchResponse, FETCH_PROTOCOL, FETCH_PROTOCOL_V1};

/// Requests written to a peer's stream and not yet answered, at most.
pub const PIPELINE_DEPTH: usize = 8;

/// A request waiting for its answer.
#[derive(Debug)]
struct Queued {
    id: FetchId,
    request: FetchRequest,
    /// Its answer already failed once.
    retried: bool,
}

/// What became of a stream's requests.
enum Halt {
    /// The answer to `.0` could not be read (`.1`).
    Failed(Queued, FetchError),
    /// No answer to `.0` came within the timeout.
    TimedOut(Queued),
    /// Nobody takes answers any more.
    Deaf,
}

/// The request at the front of `unsent`.
fn front(unsent: &Mutex<VecDeque<Queued>>) -> Option<FetchRequest> {
    let unsent = unsent.lock().unwrap_or_else(PoisonError::into_inner);
    unsent.front().map(|queued| queued.request)
}

fn pop_front(unsent: &Mutex<VecDeque<Queued>>) -> Option<Queued> {
    unsent
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .pop_front()
}

fn push_front(unsent: &Mutex<VecDeque<Queued>>, queued: Queued) {
    unsent
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push_front(queued);
}

/// Whether the link goes on.
#[must_use]
enum Flow {
    Go,
    Stop,
}

/// One peer's task: its requests, over one stream at a time.
pub(super) struct Link {
    peer: PeerId,
    control: Control,
    /// The peer speaks only [`FETCH_PROTOCOL_V1`]: a stream per request.
    one_per_stream: bool,
    timeout: Duration,
    /// The run's payload length ([`FetchRequest::longest_body`]).
    payload_len: u64,
}

impl Link {
    pub(super) fn new(peer: PeerId, control: Control, timeout: Duration, payload_len: u64) -> Self {
        Self {
            peer,
            control,
            one_per_stream: false,
            timeout,
            payload_len,
        }
    }

    /// Answers every request that comes on `requests`, until its sender
    /// (the [`super::Fetcher`]) forgets the peer and they are all answered,
    /// or `answers` is dropped.
    pub(super) async fn run(
        mut self,
        mut requests: mpsc::UnboundedReceiver<(FetchId, FetchRequest)>,
        answers: mpsc::Sender<FetchAnswer>,
    ) {
        let mut waiting = VecDeque::new();
        loop {
            if waiting.is_empty() {
                let Some((id, request)) = requests.recv().await else {
                    return;
                };
                waiting.push_back(Queued {
                    id,
                    request,
                    retried: false,
                });
            }
            let flow = if requests.is_closed() {
                // Forgotten: the peer left, and nothing more is sent to it.
                self.answer_all(&answers, waiting.drain(..), || FetchError::Left)
                    .await
            } else {
                self.serve_some(&mut waiting, &mut requests, &answers).await
            };
            if let Flow::Stop = flow {
                return;
            }
        }
    }

    /// Opens a stream and sends `waiting`, then what else is queued, over
    /// it, until it fails or is used up; what is left unanswered goes back
    /// into `waiting`.
    async fn serve_some(
        &mut self,
        waiting: &mut VecDeque<Queued>,
        requests: &mut mpsc::UnboundedReceiver<(FetchId, FetchRequest)>,
        answers: &mpsc::Sender<FetchAnswer>,
    ) -> Flow {
        let opened = tokio::time::timeout(self.timeout, self.open()).await;
        let mut stream = match opened {
            Ok(Ok(stream)) => stream,
            // The first request fails; the next tries a stream of its own.
            Ok(Err(e)) => return self.fail_first(waiting, FetchError::Open(e), answers).await,
            Err(_) => return self.time_out(waiting, requests, answers).await,
        };
        // The stream lives as long as the peer is asked things; it does not
        // keep an otherwise idle connection open.
        stream.ignore_for_keep_alive();
        let (limit, depth) = match self.one_per_stream {
            true => (1, 1),
            false => (usize::MAX, PIPELINE_DEPTH),
        };
        let queued = std::mem::take(waiting);
        let (halt, unanswered) = self
            .pipeline(stream, limit, depth, queued, requests, answers)
            .await;
        *waiting = unanswered;
        match halt {
            None => Flow::Go,
            Some(Halt::Deaf) => Flow::Stop,
            Some(Halt::Failed(queued, error)) => {
                waiting.push_front(queued);
                self.fail_first(waiting, error, answers).await
            }
            Some(Halt::TimedOut(queued)) => {
                waiting.push_front(queued);
                self.time_out(waiting, requests, answers).await
            }
        }
    }

    /// Writes requests on `stream` (`queued` first, then those that come)
    /// while fewer than `depth` are unanswered, at most `limit` of them,
    /// and reads their answers in order, until the stream fails or the
    /// requests end and all written are answered. Gives why it stopped, if
    /// not for that, and the requests left unanswered, in the order asked.
    async fn pipeline(
        &self,
        stream: Stream,
        limit: usize,
        depth: usize,
        queued: VecDeque<Queued>,
        requests: &mut mpsc::UnboundedReceiver<(FetchId, FetchRequest)>,
        answers: &mpsc::Sender<FetchAnswer>,
    ) -> (Option<Halt>, VecDeque<Queued>) {
        let (mut reader, mut writer) = stream.split();
        let slots = Semaphore::new(depth);
        // Requests not yet written, the one being written first: the writer
        // may be dropped with it on its way.
        let unsent = Mutex::new(queued);
        let (sent, mut in_flight) = mpsc::unbounded_channel();
        let halt = {
            let writing = async {
                let sent = sent;
                for _ in 0..limit {
                    let Ok(slot) = slots.acquire().await else {
                        break;
                    };
                    let request = match front(&unsent) {
                        Some(request) => request,
                        None => match requests.recv().await {
                            Some((id, request)) => {
                                push_front(
                                    &unsent,
                                    Queued {
                                        id,
                                        request,
                                        retried: false,
                                    },
                                );
                                request
                            }
                            None => break,
                        },
                    };
                    if requests.is_closed() {
                        // Forgotten: the caller answers it, unsent.
                        break;
                    }
                    let written = codec::write_request(&mut writer, &request).await;
                    let Some(queued) = pop_front(&unsent) else {
                        break;
                    };
                    if let Err(e) = written {
                        return Some((queued, FetchError::Io(e)));
                    }
                    if let Err(mpsc::error::SendError((queued, _))) = sent.send((queued, slot)) {
                        // The reader is gone: the caller has it back.
                        push_front(&unsent, queued);
                        break;
                    }
                }
                None
            };
            let reading = async {
                while let Some((queued, slot)) = in_flight.recv().await {
                    let longest = queued.request.longest_body(self.payload_len);
                    let read = codec::read_response(&mut reader, longest);
                    let response = match tokio::time::timeout(self.timeout, read).await {
                        Ok(Ok(response)) => response,
                        Ok(Err(e)) => return Some(Halt::Failed(queued, FetchError::Io(e))),
                        Err(_) => return Some(Halt::TimedOut(queued)),
                    };
                    drop(slot);
                    let answer = self.answer(queued.id, Ok(response));
                    if answers.send(answer).await.is_err() {
                        return Some(Halt::Deaf);
                    }
                }
                None
            };
            tokio::pin!(writing, reading);
            let mut write_failed = None;
            let mut writing_done = false;
            let halt = loop {
                tokio::select! {
                    failed = &mut writing, if !writing_done => {
                        // The answers to what was written are still read;
                        // the request that could not be written waits for
                        // them.
                        writing_done = true;
                        write_failed = failed;
                    }
                    halt = &mut reading => break halt,
                }
            };
            match (halt, write_failed) {
                (Some(halt), Some((queued, _))) => {
                    push_front(&unsent, queued);
                    Some(halt)
                }
                (None, Some((queued, error))) => Some(Halt::Failed(queued, error)),
                (halt, None) => halt,
            }
        };
        let mut unanswered = VecDeque::new();
        while let Ok((queued, _)) = in_flight.try_recv() {
            unanswered.push_back(queued);
        }
        unanswered.extend(unsent.into_inner().unwrap_or_else(PoisonError::into_inner));
        (halt, unanswered)
    }

    /// The first of `waiting` failed with `error`: it goes once more if the
    /// error may be the stream's and not the request's, else it is answered.
    async fn fail_first(
        &self,
        waiting: &mut VecDeque<Queued>,
        error: FetchError,
        answers: &mpsc::Sender<FetchAnswer>,
    ) -> Flow {
        let Some(first) = waiting.front_mut() else {
            return Flow::Go;
        };
        let again = matches!(&error, FetchError::Io(e) if e.kind() != io::ErrorKind::InvalidData);
        if again && !first.retried {
            first.retried = true;
            return Flow::Go;
        }
        let Some(first) = waiting.pop_front() else {
            return Flow::Go;
        };
        match answers.send(self.answer(first.id, Err(error))).await {
            Ok(()) => Flow::Go,
            Err(_) => Flow::Stop,
        }
    }

    /// No answer came in time: every request waiting and every one queued
    /// fails without being sent again.
    async fn time_out(
        &self,
        waiting: &mut VecDeque<Queued>,
        requests: &mut mpsc::UnboundedReceiver<(FetchId, FetchRequest)>,
        answers: &mpsc::Sender<FetchAnswer>,
    ) -> Flow {
        while let Ok((id, request)) = requests.try_recv() {
            waiting.push_back(Queued {
                id,
                request,
                retried: false,
            });
        }
        let timeout = self.timeout;
        self.answer_all(answers, waiting.drain(..), || FetchError::Timeout(timeout))
            .await
    }

    /// Answers each of `queued` with an error from `error`.
    async fn answer_all(
        &self,
        answers: &mpsc::Sender<FetchAnswer>,
        queued: impl IntoIterator<Item = Queued>,
        error: impl Fn() -> FetchError,
    ) -> Flow {
        for queued in queued {
            if answers
                .send(self.answer(queued.id, Err(error())))
                .await
                .is_err()
            {
                return Flow::Stop;
            }
        }
        Flow::Go
    }

    /// The answer to request `id`.
    fn answer(&self, id: FetchId, result: Result<FetchResponse, FetchError>) -> FetchAnswer {
        FetchAnswer {
            id,
            peer: self.peer,
            result,
        }
    }

    /// A new stream to the peer: [`FETCH_PROTOCOL`], or version 1 if that
    /// is all the peer speaks (learned once, for the link's life).
    async fn open(&mut self) -> Result<Stream, OpenStreamError> {
        if !self.one_per_stream {
            match self.control.open_stream(self.peer, FETCH_PROTOCOL).await {
                Err(OpenStreamError::UnsupportedProtocol(_)) => self.one_per_stream = true,
                opened => return opened,
            }
        }
        self.control.open_stream(self.peer, FETCH_PROTOCOL_V1).await
    }
}
