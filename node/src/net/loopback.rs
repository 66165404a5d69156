//! Loopback sockets for the transport's tests.

use libp2p::tcp::tokio::TcpStream;
use tokio::net::TcpListener;

/// Two ends of a loopback TCP connection: (dialer, listener).
pub(crate) async fn socket_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (dialed, accepted) =
        tokio::join!(tokio::net::TcpStream::connect(address), listener.accept());
    (TcpStream(dialed.unwrap()), TcpStream(accepted.unwrap().0))
}
