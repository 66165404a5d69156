//! `/p2ptrain/fetch/2`: the wire format of the fetch protocol, which moves
//! payloads, checkpoint slices, records and run manifests between peers ([`super::fetch`]
//! keeps one stream open per peer and sends its requests over it one after
//! another).
//!
//! ```text
//! request  = 1u8 id:[u8;32]                    a contribution and its payload
//!          | 3u8 hash:[u8;32] start:u64le len:u64le
//!                                              a slice of a checkpoint, with the
//!                                              hashes that prove it (`slices`)
//!          | 4u8 round:u64le                   a round's record
//!          | 5u8 hash:[u8;32]                  a payload kept with the records
//!          | 6u8 run:[u8;32]                   the manifest of run `run`
//! response = 0u8                               not held here
//!          | 1u8 len:u32le header len:u64le body
//! ```
//!
//! Each message says where it ends, so a stream carries any number of
//! request and response pairs; the asking side closes it when done.
//! Lengths are checked against their limits before anything is allocated:
//! a response's body against the longest an honest answer to its request
//! can be ([`FetchRequest::longest_body`]), so a peer cannot make the asker
//! set aside more memory than the answer it asked for.
//! A raw framing rather than CBOR: on large byte vectors it is several times
//! faster, and payloads are hashed by the receiver anyway.

use std::io;
use std::sync::Arc;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use p2ptrain_protocol::{Digest, Message, RoundRecord, RunManifest};

/// The protocol id: any number of requests per stream.
pub const FETCH_PROTOCOL: StreamProtocol = StreamProtocol::new("/p2ptrain/fetch/2");

/// The protocol id of earlier nodes: the same messages, one request per
/// stream, which the serving side closes after its response. Still served,
/// and spoken to a peer that knows nothing newer.
pub const FETCH_PROTOCOL_V1: StreamProtocol = StreamProtocol::new("/p2ptrain/fetch/1");

/// Largest header (an encoded signed contribution) accepted.
pub const MAX_HEADER: u32 = 64 * 1024;

/// Largest body (a payload or a checkpoint) accepted: 1 GiB.
pub const MAX_BODY: u64 = 1 << 30;

/// What a peer asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchRequest {
    /// A contribution (by id) and its payload.
    Payload(Digest),
    /// Bytes `start..start + len` of a checkpoint (by hash), as a
    /// verifiable slice ([`super::slices`]).
    CheckpointSlice {
        /// The checkpoint hash.
        hash: Digest,
        /// First byte.
        start: u64,
        /// Bytes.
        len: u64,
    },
    /// A finalized round's record (as written in a data directory).
    Record(u64),
    /// A payload that a record names, by its blake3 hash.
    StoredPayload(Digest),
    /// The manifest of a run (by id), for a node that joins the run without
    /// holding it yet. Its blake3 is the id, so it checks itself.
    RunManifest(Digest),
}

impl FetchRequest {
    /// The longest body an honest answer to this request has, given the
    /// length of the run's payloads (one length for all of them, set by the
    /// model's size and the compression settings).
    ///
    /// ```
    /// use p2ptrain_node::net::codec::{FetchRequest, MAX_BODY};
    /// use p2ptrain_protocol::Digest;
    ///
    /// let payload = FetchRequest::Payload(Digest::of(b"id"));
    /// assert_eq!(payload.longest_body(653_105), 653_105);
    /// let slice = FetchRequest::CheckpointSlice { hash: Digest::of(b"c"), start: 0, len: 1 << 20 };
    /// assert!(slice.longest_body(0) > 1 << 20 && slice.longest_body(0) < 5 << 18);
    /// assert_eq!(FetchRequest::StoredPayload(Digest::of(b"p")).longest_body(u64::MAX), MAX_BODY);
    /// ```
    pub fn longest_body(&self, payload_len: u64) -> u64 {
        let longest = match self {
            Self::Payload(_) | Self::StoredPayload(_) => payload_len,
            Self::CheckpointSlice { len, .. } => super::slices::longest_slice(*len),
            Self::Record(_) => RoundRecord::MAX_LEN as u64,
            Self::RunManifest(_) => RunManifest::MAX_LEN as u64,
        };
        longest.min(MAX_BODY)
    }
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchResponse {
    /// Not held here.
    Missing,
    /// Found: for a payload, the encoded signed contribution and the payload
    /// bytes; for anything else, an empty header and the thing asked for
    /// (a checkpoint slice, a record, a stored payload, a run manifest).
    Found {
        /// Encoded `Signed<Contribution>` (empty but for a payload).
        header: Vec<u8>,
        /// The payload or the checkpoint slice: shared, so that a node
        /// serves a payload it holds, and keeps one it receives, without a
        /// copy.
        body: Arc<[u8]>,
    },
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

async fn read_vec<T: AsyncRead + Unpin>(io: &mut T, len: usize) -> io::Result<Vec<u8>> {
    let mut bytes = vec![0u8; len];
    io.read_exact(&mut bytes).await?;
    Ok(bytes)
}

/// Reads the next request; `None` when the stream ends cleanly before one.
///
/// # Errors
///
/// An I/O error, or [`io::ErrorKind::InvalidData`] for an unknown request.
pub async fn read_request<T>(io: &mut T) -> io::Result<Option<FetchRequest>>
where
    T: AsyncRead + Unpin,
{
    let mut tag = [0u8; 1];
    if io.read(&mut tag).await? == 0 {
        return Ok(None);
    }
    if tag[0] == 4 {
        let mut round = [0u8; 8];
        io.read_exact(&mut round).await?;
        return Ok(Some(FetchRequest::Record(u64::from_le_bytes(round))));
    }
    let mut id = [0u8; 32];
    io.read_exact(&mut id).await?;
    let request = match tag[0] {
        1 => FetchRequest::Payload(Digest::from_bytes(id)),
        5 => FetchRequest::StoredPayload(Digest::from_bytes(id)),
        6 => FetchRequest::RunManifest(Digest::from_bytes(id)),
        3 => {
            let mut range = [0u8; 16];
            io.read_exact(&mut range).await?;
            let [start, len] = [&range[..8], &range[8..]]
                .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
            FetchRequest::CheckpointSlice {
                hash: Digest::from_bytes(id),
                start,
                len,
            }
        }
        _ => return Err(invalid("unknown fetch request")),
    };
    Ok(Some(request))
}

/// Reads a response whose body is at most `longest_body` bytes long (see
/// [`FetchRequest::longest_body`]), the body straight into the shared
/// buffer the node keeps.
///
/// # Errors
///
/// An I/O error, or [`io::ErrorKind::InvalidData`] for an unknown response
/// or a length over its limit, refused before the body is read.
pub async fn read_response<T>(io: &mut T, longest_body: u64) -> io::Result<FetchResponse>
where
    T: AsyncRead + Unpin,
{
    let mut tag = [0u8; 1];
    io.read_exact(&mut tag).await?;
    match tag[0] {
        0 => Ok(FetchResponse::Missing),
        1 => {
            let mut len = [0u8; 4];
            io.read_exact(&mut len).await?;
            let header_len = u32::from_le_bytes(len);
            if header_len > MAX_HEADER {
                return Err(invalid("fetch response header over the limit"));
            }
            let header = read_vec(io, header_len as usize).await?;
            let mut len = [0u8; 8];
            io.read_exact(&mut len).await?;
            let body_len = u64::from_le_bytes(len);
            if body_len > longest_body.min(MAX_BODY) {
                return Err(invalid(
                    "fetch response body longer than its request allows",
                ));
            }
            let body_len = usize::try_from(body_len).map_err(|_| invalid("body too long"))?;
            let mut body = super::buffer::zeroed(body_len);
            let Some(into) = Arc::get_mut(&mut body) else {
                return Err(invalid("body buffer shared"));
            };
            io.read_exact(into).await?;
            Ok(FetchResponse::Found { header, body })
        }
        _ => Err(invalid("unknown fetch response")),
    }
}

/// Writes a request and flushes it; the stream stays open.
///
/// # Errors
///
/// An I/O error.
pub async fn write_request<T>(io: &mut T, request: &FetchRequest) -> io::Result<()>
where
    T: AsyncWrite + Unpin,
{
    let mut wire = Vec::with_capacity(49);
    match request {
        FetchRequest::Payload(id) => {
            wire.push(1);
            wire.extend_from_slice(id.as_bytes());
        }
        FetchRequest::Record(round) => {
            wire.push(4);
            wire.extend_from_slice(&round.to_le_bytes());
        }
        FetchRequest::StoredPayload(hash) => {
            wire.push(5);
            wire.extend_from_slice(hash.as_bytes());
        }
        FetchRequest::RunManifest(run) => {
            wire.push(6);
            wire.extend_from_slice(run.as_bytes());
        }
        FetchRequest::CheckpointSlice { hash, start, len } => {
            wire.push(3);
            wire.extend_from_slice(hash.as_bytes());
            wire.extend_from_slice(&start.to_le_bytes());
            wire.extend_from_slice(&len.to_le_bytes());
        }
    }
    io.write_all(&wire).await?;
    io.flush().await
}

/// Writes a response and flushes it; the stream stays open.
///
/// # Errors
///
/// An I/O error, or [`io::ErrorKind::InvalidData`] for a response over the
/// limits.
pub async fn write_response<T>(io: &mut T, response: &FetchResponse) -> io::Result<()>
where
    T: AsyncWrite + Unpin,
{
    match response {
        FetchResponse::Missing => io.write_all(&[0]).await?,
        FetchResponse::Found { header, body } => {
            let header_len = u32::try_from(header.len()).map_err(|_| invalid("header too long"))?;
            if header_len > MAX_HEADER || body.len() as u64 > MAX_BODY {
                return Err(invalid("fetch response over the limit"));
            }
            let mut head = Vec::with_capacity(13 + header.len());
            head.push(1);
            head.extend_from_slice(&header_len.to_le_bytes());
            head.extend_from_slice(header);
            head.extend_from_slice(&(body.len() as u64).to_le_bytes());
            io.write_all(&head).await?;
            io.write_all(body).await?;
        }
    }
    io.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use futures::io::Cursor;

    fn round_trip_response(
        response: &FetchResponse,
        longest_body: u64,
    ) -> io::Result<FetchResponse> {
        block_on(async {
            let mut wire = Cursor::new(Vec::new());
            write_response(&mut wire, response).await?;
            read_response(&mut Cursor::new(wire.into_inner()), longest_body).await
        })
    }

    #[test]
    fn requests_follow_one_another_on_a_stream_until_it_ends() {
        let requests = [
            FetchRequest::Payload(Digest::of(b"a")),
            FetchRequest::CheckpointSlice {
                hash: Digest::of(b"b"),
                start: 1 << 40,
                len: 1 << 20,
            },
            FetchRequest::Record(77),
            FetchRequest::StoredPayload(Digest::of(b"c")),
            FetchRequest::RunManifest(Digest::of(b"d")),
        ];
        let back = block_on(async {
            let mut wire = Cursor::new(Vec::new());
            for request in &requests {
                write_request(&mut wire, request).await?;
            }
            let mut wire = Cursor::new(wire.into_inner());
            let mut back = Vec::new();
            while let Some(request) = read_request(&mut wire).await? {
                back.push(request);
            }
            io::Result::Ok(back)
        });
        assert_eq!(back.unwrap(), requests);
    }

    #[test]
    fn responses_round_trip() {
        let found = FetchResponse::Found {
            header: vec![1, 2, 3],
            body: Arc::from(vec![7; 100_000]),
        };
        assert_eq!(round_trip_response(&found, 100_000).unwrap(), found);
        assert_eq!(
            round_trip_response(&FetchResponse::Missing, 0).unwrap(),
            FetchResponse::Missing
        );
    }

    #[test]
    fn a_body_longer_than_its_request_allows_is_refused() {
        let found = FetchResponse::Found {
            header: Vec::new(),
            body: Arc::from(vec![7; 1_001]),
        };
        let refused = round_trip_response(&found, 1_000).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::InvalidData);
        let payload = FetchRequest::Payload(Digest::of(b"a"));
        assert!(round_trip_response(&found, payload.longest_body(1_000)).is_err());
        assert!(round_trip_response(&found, payload.longest_body(1_001)).is_ok());
    }

    #[test]
    fn lengths_over_the_limit_are_refused_before_allocating() {
        let mut wire = vec![1u8];
        wire.extend_from_slice(&0u32.to_le_bytes());
        wire.extend_from_slice(&u64::MAX.to_le_bytes());
        let read = block_on(read_response(&mut Cursor::new(wire), u64::MAX));
        assert_eq!(read.unwrap_err().kind(), io::ErrorKind::InvalidData);
        let truncated = vec![1u8, 3, 0, 0, 0, 9];
        assert!(block_on(read_response(&mut Cursor::new(truncated), MAX_BODY)).is_err());
        let read = block_on(read_request(&mut Cursor::new(vec![9u8; 33])));
        assert_eq!(read.unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn a_request_cut_short_is_an_error_not_the_end() {
        let read = block_on(read_request(&mut Cursor::new(vec![1u8; 20])));
        assert_eq!(read.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }
}
