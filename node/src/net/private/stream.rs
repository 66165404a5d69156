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

#[cfg(test)]
mod tests {
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    use super::{PnetStream, MOST_PER_WRITE};
    use crate::net::loopback::pattern;
    use crate::net::private::XSalsa20;

    /// A socket that takes at most `most` bytes a write, refuses every
    /// other write for now (and asks to be polled again), and reads what it
    /// was given.
    struct Stingy {
        taken: Vec<u8>,
        most: usize,
        refuse: bool,
        writes: usize,
        read: usize,
    }

    impl AsyncWrite for Stingy {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.refuse = !self.refuse;
            if self.refuse {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = buf.len().min(self.most);
            self.taken.extend_from_slice(&buf[..n]);
            self.writes += 1;
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncRead for Stingy {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.most).min(self.taken.len() - self.read);
            buf[..n].copy_from_slice(&self.taken[self.read..self.read + n]);
            self.read += n;
            Poll::Ready(Ok(n))
        }
    }

    fn stingy(most: usize) -> Stingy {
        Stingy {
            taken: Vec::new(),
            most,
            refuse: false,
            writes: 0,
            read: 0,
        }
    }

    #[tokio::test]
    async fn what_a_slow_socket_takes_in_pieces_is_the_whole_encrypted_stream() {
        let (key, nonce) = ([1u8; 32], [2u8; 24]);
        let sent = pattern(MOST_PER_WRITE + 70_001);
        let mut stream = PnetStream::new(
            stingy(1_000),
            XSalsa20::new(&key, &nonce),
            XSalsa20::new(&key, &[0; 24]),
        );
        // Writes larger than one write takes, and small ones.
        stream.write_all(&sent[..MOST_PER_WRITE + 5]).await.unwrap();
        stream.write_all(&sent[MOST_PER_WRITE + 5..]).await.unwrap();
        stream.flush().await.unwrap();
        let mut on_the_wire = stream.inner.taken.clone();
        assert_eq!(on_the_wire.len(), sent.len());
        assert_ne!(on_the_wire, sent);
        XSalsa20::new(&key, &nonce).apply_keystream(&mut on_the_wire);
        assert!(on_the_wire == sent);
    }

    #[tokio::test]
    async fn a_vectored_write_leaves_in_one_socket_write_and_reads_decrypt() {
        let (key, nonce) = ([3u8; 32], [4u8; 24]);
        let mut stream = PnetStream::new(
            stingy(usize::MAX),
            XSalsa20::new(&key, &nonce),
            XSalsa20::new(&key, &nonce),
        );
        let (a, b, c) = (pattern(16_384), pattern(16_401), pattern(5));
        let slices = [
            io::IoSlice::new(&a),
            io::IoSlice::new(&b),
            io::IoSlice::new(&c),
        ];
        let taken = stream.write_vectored(&slices).await.unwrap();
        stream.flush().await.unwrap();
        assert_eq!(taken, a.len() + b.len() + c.len());
        assert_eq!(stream.inner.writes, 1);
        // The same keystream both ways here: reading back decrypts.
        let mut back = vec![0u8; taken];
        stream.read_exact(&mut back).await.unwrap();
        assert!(back == [a, b, c].concat());
    }
}
