//! `/p2ptrain/fetch/1`: the request-response protocol that moves payloads
//! and checkpoints between peers, in a raw length-prefixed framing.
//!
//! ```text
//! request  = 1u8 id:[u8;32]                    a contribution and its payload
//!          | 3u8 hash:[u8;32] start:u64le len:u64le
//!                                              a slice of a checkpoint, with the
//!                                              hashes that prove it (`slices`)
//!          | 4u8 round:u64le                   a round's record
//!          | 5u8 hash:[u8;32]                  a payload kept with the records
//! response = 0u8                               not held here
//!          | 1u8 len:u32le header len:u64le body
//! ```
//!
//! Lengths are checked against their limits before anything is allocated.
//! A raw framing rather than CBOR: on large byte vectors it is several times
//! faster, and payloads are hashed by the receiver anyway.

use std::io;
use std::sync::Arc;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::request_response::Codec;
use libp2p::StreamProtocol;
use p2ptrain_protocol::Digest;

/// The protocol id.
pub const FETCH_PROTOCOL: StreamProtocol = StreamProtocol::new("/p2ptrain/fetch/1");

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
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchResponse {
    /// Not held here.
    Missing,
    /// Found: for a payload, the encoded signed contribution and the payload
    /// bytes; for a checkpoint slice, an empty header and the slice.
    Found {
        /// Encoded `Signed<Contribution>` (empty for a checkpoint).
        header: Vec<u8>,
        /// The payload or the checkpoint slice: shared, so that a node
        /// serves a payload it holds, and keeps one it receives, without a
        /// copy.
        body: Arc<[u8]>,
    },
}

/// The codec of [`FETCH_PROTOCOL`].
#[derive(Debug, Clone, Copy, Default)]
pub struct FetchCodec;

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

async fn read_vec<T: AsyncRead + Unpin>(io: &mut T, len: usize) -> io::Result<Vec<u8>> {
    let mut bytes = vec![0u8; len];
    io.read_exact(&mut bytes).await?;
    Ok(bytes)
}

impl Codec for FetchCodec {
    type Protocol = StreamProtocol;
    type Request = FetchRequest;
    type Response = FetchResponse;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<FetchRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut tag = [0u8; 1];
        io.read_exact(&mut tag).await?;
        if tag[0] == 4 {
            let mut round = [0u8; 8];
            io.read_exact(&mut round).await?;
            return Ok(FetchRequest::Record(u64::from_le_bytes(round)));
        }
        let mut id = [0u8; 32];
        io.read_exact(&mut id).await?;
        match tag[0] {
            1 => Ok(FetchRequest::Payload(Digest::from_bytes(id))),
            5 => Ok(FetchRequest::StoredPayload(Digest::from_bytes(id))),
            3 => {
                let mut range = [0u8; 16];
                io.read_exact(&mut range).await?;
                let [start, len] = [&range[..8], &range[8..]]
                    .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
                Ok(FetchRequest::CheckpointSlice {
                    hash: Digest::from_bytes(id),
                    start,
                    len,
                })
            }
            _ => Err(invalid("unknown fetch request")),
        }
    }

    async fn read_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<FetchResponse>
    where
        T: AsyncRead + Unpin + Send,
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
                if body_len > MAX_BODY {
                    return Err(invalid("fetch response body over the limit"));
                }
                let body_len = usize::try_from(body_len).map_err(|_| invalid("body too long"))?;
                // Read straight into the shared buffer the node keeps.
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

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: FetchRequest,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        match request {
            FetchRequest::Payload(id) => {
                io.write_all(&[1]).await?;
                io.write_all(id.as_bytes()).await?;
            }
            FetchRequest::Record(round) => {
                io.write_all(&[4]).await?;
                io.write_all(&round.to_le_bytes()).await?;
            }
            FetchRequest::StoredPayload(hash) => {
                io.write_all(&[5]).await?;
                io.write_all(hash.as_bytes()).await?;
            }
            FetchRequest::CheckpointSlice { hash, start, len } => {
                io.write_all(&[3]).await?;
                io.write_all(hash.as_bytes()).await?;
                io.write_all(&start.to_le_bytes()).await?;
                io.write_all(&len.to_le_bytes()).await?;
            }
        }
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: FetchResponse,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        match response {
            FetchResponse::Missing => io.write_all(&[0]).await?,
            FetchResponse::Found { header, body } => {
                let header_len =
                    u32::try_from(header.len()).map_err(|_| invalid("header too long"))?;
                if header_len > MAX_HEADER || body.len() as u64 > MAX_BODY {
                    return Err(invalid("fetch response over the limit"));
                }
                io.write_all(&[1]).await?;
                io.write_all(&header_len.to_le_bytes()).await?;
                io.write_all(&header).await?;
                io.write_all(&(body.len() as u64).to_le_bytes()).await?;
                io.write_all(&body).await?;
            }
        }
        io.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use futures::io::Cursor;

    fn round_trip_response(response: FetchResponse) -> io::Result<FetchResponse> {
        block_on(async {
            let mut wire = Cursor::new(Vec::new());
            FetchCodec
                .write_response(&FETCH_PROTOCOL, &mut wire, response)
                .await?;
            let mut wire = Cursor::new(wire.into_inner());
            FetchCodec.read_response(&FETCH_PROTOCOL, &mut wire).await
        })
    }

    #[test]
    fn requests_and_responses_round_trip() {
        for request in [
            FetchRequest::Payload(Digest::of(b"a")),
            FetchRequest::CheckpointSlice {
                hash: Digest::of(b"b"),
                start: 1 << 40,
                len: 1 << 20,
            },
            FetchRequest::Record(77),
            FetchRequest::StoredPayload(Digest::of(b"c")),
        ] {
            let back = block_on(async {
                let mut wire = Cursor::new(Vec::new());
                FetchCodec
                    .write_request(&FETCH_PROTOCOL, &mut wire, request)
                    .await?;
                let mut wire = Cursor::new(wire.into_inner());
                FetchCodec.read_request(&FETCH_PROTOCOL, &mut wire).await
            });
            assert_eq!(back.unwrap(), request);
        }
        let found = FetchResponse::Found {
            header: vec![1, 2, 3],
            body: Arc::from(vec![7; 100_000]),
        };
        assert_eq!(round_trip_response(found.clone()).unwrap(), found);
        assert_eq!(
            round_trip_response(FetchResponse::Missing).unwrap(),
            FetchResponse::Missing
        );
    }

    #[test]
    fn lengths_over_the_limit_are_refused_before_allocating() {
        let mut wire = vec![1u8];
        wire.extend_from_slice(&0u32.to_le_bytes());
        wire.extend_from_slice(&u64::MAX.to_le_bytes());
        let read = block_on(FetchCodec.read_response(&FETCH_PROTOCOL, &mut Cursor::new(wire)));
        assert_eq!(read.unwrap_err().kind(), io::ErrorKind::InvalidData);
        let truncated = vec![1u8, 3, 0, 0, 0, 9];
        let read = block_on(FetchCodec.read_response(&FETCH_PROTOCOL, &mut Cursor::new(truncated)));
        assert!(read.is_err());
        let read =
            block_on(FetchCodec.read_request(&FETCH_PROTOCOL, &mut Cursor::new(vec![9u8; 33])));
        assert_eq!(read.unwrap_err().kind(), io::ErrorKind::InvalidData);
    }
}
