//! A private swarm's transport: TCP, libp2p pnet with the swarm's
//! pre-shared key, a check that the other end holds the same key, then TLS
//! and yamux.
//!
//! pnet on its own cannot tell a wrong key: the two ends swap nonces and
//! encrypt everything after them, so a peer with another key simply reads
//! noise. What libp2p makes of that noise varies: a failed protocol
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

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::core::upgrade::Version;
use libp2p::core::Transport as _;
use libp2p::pnet::{PnetConfig, PnetError, PnetOutput, PreSharedKey};
use libp2p::tcp;

use super::mux::Yamux;
use super::tls::Tls;

/// What each end of a private connection sends first, through pnet's
/// cipher. It names the check's version, so that a later one is refused as
/// clearly as a wrong key.
pub const KEY_CHECK: [u8; 32] = *b"p2ptrain private swarm check v1\n";

/// Why a private connection was dropped before its TLS handshake.
#[derive(Debug, thiserror::Error)]
pub enum KeyCheckError {
    /// The nonce exchange of pnet failed.
    #[error("pnet handshake: {0}")]
    Pnet(#[from] PnetError),
    /// The connection failed while the check was sent or read.
    #[error("pre-shared key check: {0}")]
    Io(#[from] std::io::Error),
    /// The other end's check decrypted to something else.
    #[error("the peer holds another pre-shared key")]
    OtherKey,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// TCP, then pnet with `psk` and the key check, then TLS and yamux (a
/// private swarm's nodes all run p2ptrain, so noise is not offered there).
pub(super) fn private_tcp(
    key: &libp2p::identity::Keypair,
    psk: PreSharedKey,
) -> Result<Boxed<(libp2p::PeerId, StreamMuxerBox)>, BoxError> {
    let tls = Tls::new(key)?;
    Ok(
        tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
            .and_then(move |socket, _| enter(socket, psk))
            .upgrade(Version::V1Lazy)
            .authenticate(tls)
            .multiplex(Yamux::default())
            .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
            .boxed(),
    )
}

/// `socket` wrapped in pnet with `psk`, once the other end has shown that
/// it holds the same key.
///
/// # Errors
///
/// [`KeyCheckError::OtherKey`] if it holds another; the others if the
/// connection fails first.
pub async fn enter<S>(socket: S, psk: PreSharedKey) -> Result<PnetOutput<S>, KeyCheckError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let mut private = PnetConfig::new(psk).handshake(socket).await?;
    private.write_all(&KEY_CHECK).await?;
    private.flush().await?;
    let mut theirs = [0u8; KEY_CHECK.len()];
    private.read_exact(&mut theirs).await?;
    if theirs == KEY_CHECK {
        Ok(private)
    } else {
        Err(KeyCheckError::OtherKey)
    }
}

#[cfg(test)]
mod tests {
    use futures::{AsyncReadExt, AsyncWriteExt};
    use libp2p::pnet::PreSharedKey;

    use super::{enter, KeyCheckError};
    use crate::net::loopback::socket_pair;

    #[tokio::test]
    async fn ends_with_the_same_key_pass_the_check_and_then_talk() {
        let (dialer, listener) = socket_pair().await;
        let psk = PreSharedKey::new([7; 32]);
        let (dialed, accepted) = tokio::join!(enter(dialer, psk), enter(listener, psk));
        let (mut dialed, mut accepted) = (dialed.unwrap(), accepted.unwrap());
        let talk = async {
            dialed.write_all(b"after the check").await?;
            dialed.flush().await
        };
        let mut heard = [0u8; 15];
        let (sent, read) = tokio::join!(talk, accepted.read_exact(&mut heard));
        sent.unwrap();
        read.unwrap();
        assert_eq!(&heard, b"after the check");
    }

    #[tokio::test]
    async fn ends_with_different_keys_are_both_told_so() {
        // Another key altogether, and one that differs in its last byte.
        let mut near = [7u8; 32];
        near[31] = 8;
        for theirs in [[8u8; 32], near] {
            let (dialer, listener) = socket_pair().await;
            let (dialed, accepted) = tokio::join!(
                enter(dialer, PreSharedKey::new([7; 32])),
                enter(listener, PreSharedKey::new(theirs)),
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
        let (dialed, ()) = tokio::join!(enter(dialer, PreSharedKey::new([7; 32])), hang_up);
        let error = dialed.err();
        assert!(matches!(error, Some(KeyCheckError::Io(_))), "{error:?}");
    }
}
