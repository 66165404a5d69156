//! A private swarm's transport: TCP, pnet with the swarm's pre-shared key,
//! a check that the other end holds the same key, then TLS and yamux.
//!
//! pnet is the protocol of libp2p's `pnet` (and of go-libp2p and IPFS):
//! each end sends a random 24-byte nonce, then everything it writes is
//! XORed with the XSalsa20 keystream of the key and its nonce. It is built
//! here rather than taken from libp2p-pnet for speed (see [`XSalsa20`]):
//! the cipher runs on every byte under the TLS, and libp2p-pnet's bounded
//! a private swarm's transfers to a fraction of a public one's.
//!
//! pnet on its own cannot tell a wrong key: a peer with another key simply
//! reads noise. What libp2p makes of that noise varies: a failed protocol
//! negotiation at once, or, when the noise decodes as a plausible length,
//! a wait for bytes that never come, until the 10 s connection timeout.
//! So both ends first send [`KEY_CHECK`] through the cipher and compare
//! what they read with it: equal only when both hold the same key (a wrong
//! key matches by chance with probability 2⁻²⁵⁶), and a mismatch is told
//! as such, at once, on both ends.
//!
//! ```
//! # use p2ptrain_node::net::private::KeyCheckError;
//! assert_eq!(
//!     KeyCheckError::OtherKey.to_string(),
//!     "the peer holds another pre-shared key",
//! );
//! ```

mod stream;
mod xsalsa20;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::core::upgrade::Version;
use libp2p::core::Transport as _;
use libp2p::tcp;

pub use stream::PnetStream;
pub use xsalsa20::XSalsa20;

use super::access::SwarmKey;
use super::mux::Yamux;
use super::tls::Tls;

/// What each end of a private connection sends first, through pnet's
/// cipher. It names the check's version, so that a later one is refused as
/// clearly as a wrong key.
pub const KEY_CHECK: [u8; 32] = *b"p2ptrain private swarm check v1\n";

/// Bytes of pnet's nonce.
const NONCE: usize = 24;

/// Why a private connection was dropped before its TLS handshake.
#[derive(Debug, thiserror::Error)]
pub enum KeyCheckError {
    /// No random nonce could be drawn.
    #[error("pnet nonce: {0}")]
    Random(getrandom::Error),
    /// The connection failed while the nonces or the check were sent or
    /// read.
    #[error("pre-shared key check: {0}")]
    Io(#[from] std::io::Error),
    /// The other end's check decrypted to something else.
    #[error("the peer holds another pre-shared key")]
    OtherKey,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// TCP, then pnet with `key` and the key check, then TLS and yamux (a
/// private swarm's nodes all run p2ptrain, so noise is not offered there).
pub(super) fn private_tcp(
    identity: &libp2p::identity::Keypair,
    key: SwarmKey,
) -> Result<Boxed<(libp2p::PeerId, StreamMuxerBox)>, BoxError> {
    let tls = Tls::new(identity)?;
    Ok(
        tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
            .and_then(move |socket, _| enter(socket, key))
            .upgrade(Version::V1Lazy)
            .authenticate(tls)
            .multiplex(Yamux::default())
            .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
            .boxed(),
    )
}

/// `socket` inside pnet with `key`, once the other end has shown that it
/// holds the same key.
///
/// # Errors
///
/// [`KeyCheckError::OtherKey`] if it holds another; the others if the
/// connection fails first.
pub async fn enter<S>(mut socket: S, key: SwarmKey) -> Result<PnetStream<S>, KeyCheckError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut ours = [0u8; NONCE];
    getrandom::getrandom(&mut ours).map_err(KeyCheckError::Random)?;
    socket.write_all(&ours).await?;
    socket.flush().await?;
    let mut theirs = [0u8; NONCE];
    socket.read_exact(&mut theirs).await?;
    let mut private = PnetStream::new(
        socket,
        XSalsa20::new(key.bytes(), &ours),
        XSalsa20::new(key.bytes(), &theirs),
    );
    private.write_all(&KEY_CHECK).await?;
    private.flush().await?;
    let mut check = [0u8; KEY_CHECK.len()];
    private.read_exact(&mut check).await?;
    if check == KEY_CHECK {
        Ok(private)
    } else {
        Err(KeyCheckError::OtherKey)
    }
}

#[cfg(test)]
mod tests {
    use futures::{AsyncReadExt, AsyncWriteExt};
    use libp2p::tcp::tokio::TcpStream;

    use super::{enter, KeyCheckError, PnetStream, KEY_CHECK};
    use crate::net::access::SwarmKey;
    use crate::net::loopback::{pattern, round_trip, socket_pair};

    #[tokio::test]
    async fn ends_with_the_same_key_pass_the_check_and_then_carry_bytes_both_ways() {
        let (dialer, listener) = socket_pair().await;
        let key = SwarmKey::new([7; 32]);
        let (dialed, accepted) = tokio::join!(enter(dialer, key), enter(listener, key));
        let (mut dialed, mut accepted) = (dialed.unwrap(), accepted.unwrap());
        // Small writes, writes that straddle the keystream's batches, and
        // writes larger than one write takes.
        for (len, piece) in [(15, 15), (100_003, 2_047), (3 << 20, 700_001)] {
            let sent = pattern(len);
            let (received, echoed) = round_trip(&mut dialed, &mut accepted, &sent, piece).await;
            assert!(received == sent, "{len} bytes in pieces of {piece}");
            assert!(echoed == sent, "{len} bytes in pieces of {piece}, echoed");
        }
    }

    /// libp2p's own pnet, with the key check run by hand.
    async fn libp2p_end(socket: TcpStream, key: [u8; 32]) -> libp2p_pnet::PnetOutput<TcpStream> {
        let mut private = libp2p_pnet::PnetConfig::new(libp2p_pnet::PreSharedKey::new(key))
            .handshake(socket)
            .await
            .unwrap();
        private.write_all(&KEY_CHECK).await.unwrap();
        private.flush().await.unwrap();
        let mut check = [0u8; 32];
        private.read_exact(&mut check).await.unwrap();
        assert_eq!(check, KEY_CHECK);
        private
    }

    #[tokio::test]
    async fn speaks_libp2ps_pnet_both_ways() {
        for we_dial in [true, false] {
            let (dialer, listener) = socket_pair().await;
            let (ours, theirs) = if we_dial {
                (dialer, listener)
            } else {
                (listener, dialer)
            };
            let (ours, mut theirs) = tokio::join!(
                enter(ours, SwarmKey::new([9; 32])),
                libp2p_end(theirs, [9; 32])
            );
            let mut ours: PnetStream<TcpStream> = ours.unwrap();
            let sent = pattern(1 << 20);
            let (received, echoed) = round_trip(&mut ours, &mut theirs, &sent, 40_009).await;
            assert!(received == sent && echoed == sent, "we dial: {we_dial}");
            let (received, echoed) = round_trip(&mut theirs, &mut ours, &sent, 16_411).await;
            assert!(received == sent && echoed == sent, "we dial: {we_dial}");
        }
    }

    #[tokio::test]
    async fn ends_with_different_keys_are_both_told_so() {
        // Another key altogether, and one that differs in its last byte.
        let mut near = [7u8; 32];
        near[31] = 8;
        for theirs in [[8u8; 32], near] {
            let (dialer, listener) = socket_pair().await;
            let (dialed, accepted) = tokio::join!(
                enter(dialer, SwarmKey::new([7; 32])),
                enter(listener, SwarmKey::new(theirs)),
            );
            let (dialed, accepted) = (dialed.err(), accepted.err());
            assert!(
                matches!(dialed, Some(KeyCheckError::OtherKey)),
                "{dialed:?}"
            );
            assert!(
                matches!(accepted, Some(KeyCheckError::OtherKey)),
                "{accepted:?}"
            );
        }
    }

    #[tokio::test]
    async fn an_end_that_hangs_up_during_the_check_is_an_io_error() {
        use tokio::io::AsyncReadExt as _;
        let (dialer, listener) = socket_pair().await;
        // The other end reads the nonce and hangs up without a check.
        let hang_up = async move {
            let mut listener = listener.0;
            let mut nonce = [0u8; 24];
            listener.read_exact(&mut nonce).await.unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut listener, &[0; 24])
                .await
                .unwrap();
        };
        let (dialed, ()) = tokio::join!(enter(dialer, SwarmKey::new([7; 32])), hang_up);
        let error = dialed.err();
        assert!(matches!(error, Some(KeyCheckError::Io(_))), "{error:?}");
    }
}
