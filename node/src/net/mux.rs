//! Streams over one TCP connection: yamux (`/yamux/1.0.0`), sending data
//! frames of up to 256 KiB.
//!
//! The wire protocol is the one every libp2p peer speaks; only the size a
//! write is cut into differs. libp2p's yamux sends 16 KiB frames and flushes
//! each through the security layer on its own, which on loopback cost more
//! than half of a payload transfer's time. A frame of 256 KiB still leaves
//! gossip on the same connection waiting at most a fraction of a
//! millisecond at the speeds payloads move. And a small frame leaves with
//! its header in one write, so in one TLS record and one system call, where
//! yamux alone writes the two apart (a fetch of 1 KiB: 0.24–0.25 ms →
//! 0.20–0.22 ms on loopback).
//!
//! ```
//! use p2ptrain_node::net::mux::Yamux;
//! use libp2p::core::upgrade::UpgradeInfo;
//!
//! assert_eq!(Yamux::default().protocol_info().next(), Some("/yamux/1.0.0"));
//! ```

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use futures::future::{ready, Ready};
use futures::io::BufWriter;
use futures::{AsyncRead, AsyncWrite};
use libp2p::core::muxing::{StreamMuxer, StreamMuxerEvent};
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};
use yamux::{Connection, ConnectionError, Mode, Stream};

/// The largest data frame this side sends.
pub const FRAME_BYTES: usize = 256 * 1024;

/// Frames up to this size leave with their header in one write to the
/// security layer: yamux writes a frame's 12-byte header and its body apart,
/// and TLS seals each write in a record of its own and sends it with a
/// system call of its own. yamux flushes after every frame, so nothing
/// waits here; a larger frame goes through unbuffered, after its header.
const WRITE_BUFFER: usize = 16 * 1024;

/// Inbound streams held for the swarm before new ones are reset; yamux's
/// own acknowledgement backlog, so a well-behaved peer never reaches it.
const MAX_WAITING_INBOUND: usize = 256;

/// The multiplexer upgrade of a node's TCP connections.
#[derive(Debug, Clone)]
pub struct Yamux(yamux::Config);

impl Default for Yamux {
    fn default() -> Self {
        let mut config = yamux::Config::default();
        config.set_split_send_size(FRAME_BYTES);
        Self(config)
    }
}

impl Yamux {
    /// The connection over `socket`, on the side `mode` names.
    fn muxer<C: AsyncRead + AsyncWrite + Unpin>(self, socket: C, mode: Mode) -> Muxer<C> {
        let socket = BufWriter::with_capacity(WRITE_BUFFER, socket);
        Muxer::new(Connection::new(socket, self.0, mode))
    }
}

impl UpgradeInfo for Yamux {
    type Info = &'static str;
    type InfoIter = std::iter::Once<Self::Info>;

    fn protocol_info(&self) -> Self::InfoIter {
        std::iter::once("/yamux/1.0.0")
    }
}

impl<C> InboundConnectionUpgrade<C> for Yamux
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = Muxer<C>;
    type Error = std::io::Error;
    type Future = Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, socket: C, _: Self::Info) -> Self::Future {
        ready(Ok(self.muxer(socket, Mode::Server)))
    }
}

impl<C> OutboundConnectionUpgrade<C> for Yamux
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = Muxer<C>;
    type Error = std::io::Error;
    type Future = Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, socket: C, _: Self::Info) -> Self::Future {
        ready(Ok(self.muxer(socket, Mode::Client)))
    }
}

/// A yamux connection as libp2p's swarm drives it.
///
/// yamux hands out inbound streams only while its connection is polled,
/// and the swarm polls the connection ([`StreamMuxer::poll`]) apart from
/// asking for inbound streams ([`StreamMuxer::poll_inbound`]); streams that
/// arrive in between wait here.
pub struct Muxer<C> {
    connection: Connection<BufWriter<C>>,
    waiting_inbound: VecDeque<Stream>,
    inbound_waker: Option<Waker>,
}

impl<C> Muxer<C> {
    fn new(connection: Connection<BufWriter<C>>) -> Self {
        Self {
            connection,
            waiting_inbound: VecDeque::new(),
            inbound_waker: None,
        }
    }
}

impl<C> Muxer<C>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    /// Drives the connection until the next inbound stream.
    fn poll_next_stream(&mut self, cx: &mut Context<'_>) -> Poll<Result<Stream, ConnectionError>> {
        match self.connection.poll_next_inbound(cx) {
            Poll::Ready(Some(stream)) => Poll::Ready(stream),
            Poll::Ready(None) => Poll::Ready(Err(ConnectionError::Closed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<C> StreamMuxer for Muxer<C>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    type Substream = Stream;
    type Error = ConnectionError;

    fn poll_inbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let this = self.get_mut();
        if let Some(stream) = this.waiting_inbound.pop_front() {
            return Poll::Ready(Ok(stream));
        }
        let next = this.poll_next_stream(cx);
        if next.is_pending() {
            this.inbound_waker = Some(cx.waker().clone());
        }
        next
    }

    fn poll_outbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        self.get_mut().connection.poll_new_outbound(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().connection.poll_close(cx)
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, Self::Error>> {
        let this = self.get_mut();
        let stream = match this.poll_next_stream(cx) {
            Poll::Ready(Ok(stream)) => stream,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        // Past the limit the stream is dropped, which resets it.
        if this.waiting_inbound.len() < MAX_WAITING_INBOUND {
            this.waiting_inbound.push_back(stream);
            if let Some(waker) = this.inbound_waker.take() {
                waker.wake();
            }
        }
        // Other frames may be waiting: come back at once, after the rest of
        // the swarm had its turn.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use futures::{AsyncReadExt, AsyncWriteExt};
    use libp2p::tcp::tokio::TcpStream;

    use super::*;
    use crate::net::loopback::socket_pair;

    /// yamux's frame types (the spec's numbering).
    const DATA: u8 = 0;

    /// The body lengths of the data frames that reach `socket` until
    /// `total` bytes of data have come, reading yamux's 12-byte headers
    /// (version, type, flags, stream id, length; big-endian) by hand.
    async fn data_frames(socket: &mut TcpStream, total: usize) -> Vec<usize> {
        let mut frames = Vec::new();
        while frames.iter().sum::<usize>() < total {
            let mut header = [0u8; 12];
            socket.read_exact(&mut header).await.unwrap();
            let len = u32::from_be_bytes(header[8..12].try_into().unwrap()) as usize;
            if header[1] == DATA {
                let mut body = vec![0u8; len];
                socket.read_exact(&mut body).await.unwrap();
                frames.push(len);
            }
        }
        frames
    }

    /// A socket that counts the writes made to it.
    struct Counted {
        socket: TcpStream,
        writes: Arc<AtomicUsize>,
    }

    impl AsyncRead for Counted {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.socket).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Counted {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.writes.fetch_add(1, Ordering::Relaxed);
            Pin::new(&mut self.socket).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.socket).poll_flush(cx)
        }

        fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.socket).poll_close(cx)
        }
    }

    /// Every frame read off `socket`, as (type, body length), through the
    /// first data frame of `len` bytes.
    async fn frames_through_data(socket: &mut TcpStream, len: usize) -> Vec<(u8, usize)> {
        let mut frames = Vec::new();
        loop {
            let mut header = [0u8; 12];
            socket.read_exact(&mut header).await.unwrap();
            let body = u32::from_be_bytes(header[8..12].try_into().unwrap()) as usize;
            if header[1] == DATA {
                socket.read_exact(&mut vec![0u8; body]).await.unwrap();
            }
            frames.push((header[1], body));
            if header[1] == DATA && body == len {
                return frames;
            }
        }
    }

    #[tokio::test]
    async fn a_small_frame_leaves_with_its_header_in_one_write() {
        let (local, mut remote) = socket_pair().await;
        let writes = Arc::new(AtomicUsize::new(0));
        let socket = Counted {
            socket: local,
            writes: writes.clone(),
        };
        let mut muxer = Yamux::default().muxer(socket, Mode::Client);
        let mut stream = futures::future::poll_fn(|cx| Pin::new(&mut muxer).poll_outbound(cx))
            .await
            .unwrap();
        let write = async {
            stream.write_all(&[7u8; 100]).await.unwrap();
            futures::future::pending::<()>().await;
        };
        let drive = futures::future::poll_fn(|cx| {
            let _ = Pin::new(&mut muxer).poll(cx);
            Poll::<()>::Pending
        });
        let frames = tokio::select! {
            frames = frames_through_data(&mut remote, 100) => frames,
            _ = async { futures::join!(write, drive) } => unreachable!("both wait forever"),
        };
        assert_eq!(writes.load(Ordering::Relaxed), frames.len(), "{frames:?}");
    }

    #[tokio::test]
    async fn a_stream_sends_its_whole_initial_window_in_one_frame() {
        let (local, mut remote) = socket_pair().await;
        let mut muxer = Yamux::default().muxer(local, Mode::Client);
        let mut stream = futures::future::poll_fn(|cx| Pin::new(&mut muxer).poll_outbound(cx))
            .await
            .unwrap();
        // The remote never grants more than yamux's initial 256 KiB.
        let window = yamux::DEFAULT_CREDIT as usize;
        let write = async {
            let _ = stream.write_all(&vec![7u8; 2 * window]).await;
        };
        let drive = futures::future::poll_fn(|cx| {
            let _ = Pin::new(&mut muxer).poll(cx);
            Poll::<()>::Pending
        });
        let frames = tokio::select! {
            frames = data_frames(&mut remote, window) => frames,
            _ = async { futures::join!(write, drive) } => unreachable!("the write waits for credit"),
        };
        assert_eq!(frames, [FRAME_BYTES]);
    }
}
