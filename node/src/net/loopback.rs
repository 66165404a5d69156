//! Loopback sockets and swarms for the network's tests.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::swarm::SwarmEvent;
use libp2p::tcp::tokio::TcpStream;
use libp2p::{Multiaddr, Swarm};
use p2ptrain_protocol::SigningKey;
use tokio::net::TcpListener;

use super::{build_swarm, Behaviour, NetConfig};

/// Two node swarms without mDNS, keyed by `seeds`: (asking, serving), the
/// serving one listening on 127.0.0.1 at the address returned.
pub(crate) async fn swarm_pair(seeds: [u8; 2]) -> (Swarm<Behaviour>, Swarm<Behaviour>, Multiaddr) {
    let config = NetConfig {
        mdns: false,
        ..NetConfig::default()
    };
    let [asking, serving] =
        seeds.map(|seed| build_swarm(&SigningKey::from_bytes(&[seed; 32]), &config).unwrap());
    let mut serving = serving;
    serving
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    let address = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = serving.select_next_some().await {
            break address;
        }
    };
    (asking, serving, address)
}

/// Two ends of a loopback TCP connection: (dialer, listener).
pub(crate) async fn socket_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (dialed, accepted) =
        tokio::join!(tokio::net::TcpStream::connect(address), listener.accept());
    (TcpStream(dialed.unwrap()), TcpStream(accepted.unwrap().0))
}

/// Sends `bytes` one way in writes of `piece` bytes (plain and
/// vectored in turn), echoes them back, and returns (received, echoed).
pub(crate) async fn round_trip<A, B>(
    from: &mut A,
    to: &mut B,
    bytes: &[u8],
    piece: usize,
) -> (Vec<u8>, Vec<u8>)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let send = async {
        for (i, chunk) in bytes.chunks(piece).enumerate() {
            if i % 2 == 0 {
                from.write_all(chunk).await?;
            } else {
                let (a, b) = chunk.split_at(chunk.len() / 2);
                let mut rest = [std::io::IoSlice::new(a), std::io::IoSlice::new(b)];
                let mut slices = &mut rest[..];
                while !slices.is_empty() {
                    let n = from.write_vectored(slices).await?;
                    std::io::IoSlice::advance_slices(&mut slices, n);
                }
            }
        }
        from.flush().await?;
        let mut echoed = vec![0u8; bytes.len()];
        from.read_exact(&mut echoed).await?;
        Ok::<_, std::io::Error>(echoed)
    };
    let echo = async {
        let mut received = vec![0u8; bytes.len()];
        to.read_exact(&mut received).await?;
        to.write_all(&received).await?;
        to.flush().await?;
        Ok::<_, std::io::Error>(received)
    };
    let (echoed, received) = tokio::join!(send, echo);
    (received.unwrap(), echoed.unwrap())
}

/// `len` bytes of a pattern that repeats every 251.
pub(crate) fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}
