//! A connection inside pnet's cipher: what is written is encrypted with
//! this end's keystream, what is read is decrypted with the other end's.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures::{AsyncRead, AsyncWrite};

use super::xsalsa20::XSalsa20;

/// Most bytes taken from one write: larger writes are taken in parts, as
/// a socket takes them.
const MOST_PER_WRITE: usize = 256 << 10;

/// `S` inside pnet's cipher (see [`super::enter`]).
pub struct PnetStream<S> {
    inner: S,
    read_cipher: XSalsa20,
    write_cipher: XSalsa20,
    /// Bytes written and encrypted that `inner` has not taken yet, from
    /// `sent` on.
    unsent: Vec<u8>,
    sent: usize,
}

impl<S> PnetStream<S> {
    pub(super) fn new(inner: S, write_cipher: XSalsa20, read_cipher: XSalsa20) -> Self {
        Self {
            inner,
            read_cipher,
            write_cipher,
            unsent: Vec::new(),
            sent: 0,
        }
    }
}

impl<S: AsyncWrite + Unpin> PnetStream<S> {
    /// Hands `inner` the bytes it has not taken yet; ready once it has
    /// taken them all.
    fn poll_send_unsent(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.unsent.len() {
            let taken =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.unsent[self.sent..]))?;
            if taken == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += taken;
        }
        self.unsent.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Takes up to [`MOST_PER_WRITE`] bytes of `bufs`, encrypted, once
    /// the bytes before them are gone, and starts sending them.
    fn poll_take(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        ready!(self.poll_send_unsent(cx))?;
        for buf in bufs {
            let room = MOST_PER_WRITE - self.unsent.len();
            if room == 0 {
                break;
            }
            self.unsent.extend_from_slice(&buf[..buf.len().min(room)]);
        }
        let taken = self.unsent.len();
        self.write_cipher.apply_keystream(&mut self.unsent);
        // Taken whether or not the socket takes them now: a flush or the
        // next write sends them.
        if let Poll::Ready(Err(error)) = self.poll_send_unsent(cx) {
            return Poll::Ready(Err(error));
        }
        Poll::Ready(Ok(taken))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PnetStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let read = ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        this.read_cipher.apply_keystream(&mut buf[..read]);
        Poll::Ready(Ok(read))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PnetStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_take(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_take(cx, bufs)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_unsent(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_unsent(cx))?;
        Pin::new(&mut this.inner).poll_close(cx)
    }
}
