//! How the outside reads a running node: its [`Status`] as JSON on a Unix
//! socket in the data directory (what `p2pnode status` asks), and as
//! Prometheus metrics over HTTP (`p2pnode join --metrics ADDR`).
//!
//! Both serve the snapshot the event loop keeps current; neither can change
//! anything in the node.
//!
//! ```no_run
//! # async fn example(status: tokio::sync::watch::Receiver<p2ptrain_node::swarm_loop::Status>)
//! # -> Result<(), p2ptrain_node::control::ControlError> {
//! use p2ptrain_node::control;
//!
//! let socket = std::path::Path::new("p2ptrain-data/node.sock");
//! tokio::spawn(control::serve_status(control::bind_status(socket)?, status));
//! let now = control::read_status(socket).await?;
//! println!("round {}", now.round);
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::swarm_loop::Status;

/// The status socket's file name in a data directory.
pub const STATUS_SOCKET: &str = "node.sock";

/// Largest HTTP request head the metrics server reads.
const MAX_REQUEST: usize = 8 * 1024;

/// How long a metrics client has to send its request head: one that sends
/// nothing, or a byte at a time, is disconnected rather than held open.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a server waits after a failed accept before the next: the
/// failure may last (no file descriptors left), and an immediate retry
/// would keep a core busy until it ends.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Why the status or metrics endpoint failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No node answers on the socket.
    #[error("no node is running on {path}: {error}")]
    NotRunning {
        /// The socket.
        path: String,
        /// What connecting said.
        error: std::io::Error,
    },
    /// Another node holds the socket.
    #[error("another node is running on {0}")]
    InUse(String),
    /// Reading or writing failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The node's answer was not a status.
    #[error("the node's answer is not a status: {0}")]
    Malformed(#[from] serde_json::Error),
    /// This platform has no Unix sockets.
    #[error("the status socket needs a Unix system")]
    Unsupported,
}

/// Binds the status socket at `path`, replacing a stale one left by a
/// node that was killed.
///
/// # Errors
///
/// [`ControlError::InUse`] when a live node answers there; I/O errors.
#[cfg(unix)]
pub fn bind_status(path: &Path) -> Result<tokio::net::UnixListener, ControlError> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse(path.display().to_string()));
        }
        std::fs::remove_file(path)?;
    }
    Ok(tokio::net::UnixListener::bind(path)?)
}

/// Answers every connection to `listener` with the current status as one
/// line of JSON, until the status' sender is dropped.
#[cfg(unix)]
pub async fn serve_status(listener: tokio::net::UnixListener, status: watch::Receiver<Status>) {
    loop {
        let Some(mut stream) = accepted(listener.accept().await).await else {
            continue;
        };
        if status.has_changed().is_err() {
            return;
        }
        let Ok(mut line) = serde_json::to_vec(&*status.borrow()) else {
            continue;
        };
        line.push(b'\n');
        // A client that hangs up early loses its answer, nothing more.
        let _ = stream.write_all(&line).await;
    }
}

/// Reads a running node's status from its socket.
///
/// # Errors
///
/// [`ControlError::NotRunning`] when nothing answers; a malformed answer.
#[cfg(unix)]
pub async fn read_status(path: &Path) -> Result<Status, ControlError> {
    let mut stream = tokio::net::UnixStream::connect(path)
        .await
        .map_err(|source| ControlError::NotRunning {
            path: path.display().to_string(),
            error: source,
        })?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    Ok(serde_json::from_slice(&answer)?)
}

/// Reads a running node's status (not on this platform).
///
/// # Errors
///
/// Always [`ControlError::Unsupported`].
#[cfg(not(unix))]
pub async fn read_status(_path: &Path) -> Result<Status, ControlError> {
    Err(ControlError::Unsupported)
}

/// Binds the metrics server's address.
///
/// # Errors
///
/// I/O errors (address in use, no permission).
pub async fn bind_metrics(address: SocketAddr) -> Result<TcpListener, ControlError> {
    Ok(TcpListener::bind(address).await?)
}

/// Serves `GET /metrics` (Prometheus text format) on `listener`, and 404
/// for any other path, until the status' sender is dropped.
///
/// A client has 5 s to send its request.
pub async fn serve_metrics(listener: TcpListener, status: watch::Receiver<Status>) {
    serve_metrics_within(listener, status, REQUEST_TIMEOUT).await;
}

/// [`serve_metrics`], closing a connection whose request head has not
/// arrived within `request_timeout`.
async fn serve_metrics_within(
    listener: TcpListener,
    status: watch::Receiver<Status>,
    request_timeout: Duration,
) {
    loop {
        let Some(mut stream) = accepted(listener.accept().await).await else {
            continue;
        };
        if status.has_changed().is_err() {
            return;
        }
        let body = status.borrow().prometheus();
        tokio::spawn(async move {
            let read = tokio::time::timeout(request_timeout, read_request_head(&mut stream));
            let Ok(Ok(head)) = read.await else {
                return;
            };
            let response = match request_path(&head) {
                Some("/metrics") => format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                ),
                _ => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_owned(),
            };
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

/// The connection an accept gave, or `None` after [`ACCEPT_BACKOFF`] when
/// it failed.
async fn accepted<S, A>(accept: std::io::Result<(S, A)>) -> Option<S> {
    match accept {
        Ok((stream, _)) => Some(stream),
        Err(_) => {
            tokio::time::sleep(ACCEPT_BACKOFF).await;
            None
        }
    }
}

/// Reads up to the blank line that ends an HTTP request head.
async fn read_request_head(stream: &mut tokio::net::TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(head)
}

/// The path of a `GET` request line.
fn request_path(head: &[u8]) -> Option<&str> {
    let line = std::str::from_utf8(head).ok()?.lines().next()?;
    let mut parts = line.split(' ');
    (parts.next()? == "GET").then_some(())?;
    parts.next().map(|p| p.split('?').next().unwrap_or(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_of_a_get_request_is_read_and_other_methods_are_not() {
        assert_eq!(
            request_path(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some("/metrics")
        );
        assert_eq!(request_path(b"POST /metrics HTTP/1.1\r\n\r\n"), None);
        assert_eq!(request_path(b"\xff\xfe"), None);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_client_reads_the_current_status_and_a_stale_socket_is_replaced() {
        let dir = crate::scratch::scratch_dir("control");
        let path = dir.join(STATUS_SOCKET);
        // A socket file nobody listens on, as a killed node leaves.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(matches!(
            read_status(&path).await,
            Err(ControlError::NotRunning { .. })
        ));

        let (tx, rx) = watch::channel(Status::default());
        let listener = bind_status(&path).unwrap();
        assert!(matches!(bind_status(&path), Err(ControlError::InUse(_))));
        tokio::spawn(serve_status(listener, rx));
        tx.send_modify(|s| {
            s.round = 7;
            s.peers = 3;
        });
        let status = read_status(&path).await.unwrap();
        assert_eq!((status.round, status.peers), (7, 3));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn metrics_are_served_at_their_path_only() {
        let listener = bind_metrics("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let address = listener.local_addr().unwrap();
        let (tx, rx) = watch::channel(Status::default());
        tokio::spawn(serve_metrics(listener, rx));
        tx.send_modify(|s| s.bytes_in = 1234);
        let get = |path: &'static str| async move {
            let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
            let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.unwrap();
            answer
        };
        let metrics = get("/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200 OK"));
        assert!(metrics.contains("\np2ptrain_received_bytes_total 1234\n"));
        assert!(get("/").await.starts_with("HTTP/1.1 404"));
    }

    #[tokio::test]
    async fn a_client_that_sends_no_request_is_disconnected_and_others_are_served() {
        let listener = bind_metrics("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let address = listener.local_addr().unwrap();
        let (_tx, rx) = watch::channel(Status::default());
        let request_timeout = Duration::from_millis(200);
        tokio::spawn(serve_metrics_within(listener, rx, request_timeout));
        let started = std::time::Instant::now();
        let mut silent = tokio::net::TcpStream::connect(address).await.unwrap();
        // Half a request head, then nothing.
        silent
            .write_all(b"GET /metrics HTTP/1.1\r\n")
            .await
            .unwrap();
        let mut other = tokio::net::TcpStream::connect(address).await.unwrap();
        other
            .write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        other.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK"));
        // The server closes the silent connection, unanswered.
        let mut unanswered = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(30), silent.read_to_end(&mut unanswered));
        assert_eq!(closed.await.unwrap().unwrap(), 0);
        assert!(started.elapsed() >= request_timeout);
    }
}
