//! Payload transfer between two nodes on loopback — the fetch protocol on a
//! stream kept open, over TCP, TLS and yamux, as nodes move payloads —
//! beside raw TCP on loopback in the same run, for several payload sizes.
//!
//! A third column shows what encryption alone costs: the same transfer over
//! TLS 1.3 with the nodes' own rustls configuration (same cipher, same
//! certificates) on a plain socket, two blocking threads and nothing else:
//! about the most a transfer secured by that TLS can do on the machine.
//!
//! With `--private`, the two nodes form a private swarm, as `p2pnode join
//! --psk` runs them: pnet's XSalsa20 under the TLS, after the key check.
//!
//! `cargo run --release -p p2ptrain-node --example bench_transfer -- [--mb 1 --mb 4 --mb 16 --mb 64] [--kib 1] [--connections 5] [--warm-up-ms 50] [--runs 20] [--listen /ip4/127.0.0.1/udp/0/quic-v1 | --private]`
//!
//! Each kind runs over several connections, each opened afresh, the kinds
//! taking turns; each connection carries untimed transfers for its first
//! milliseconds, then the timed ones. Prints, for each size, MB/s at the
//! median of all timed transfers of each kind, the ratios of the fetch to
//! raw TCP (the target) and to TLS alone, and each connection's median.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use p2ptrain_node::net::access::SwarmKey;
use p2ptrain_node::net::codec::{FetchRequest, FetchResponse};
use p2ptrain_node::net::fetch::{self, Fetcher};
use p2ptrain_node::net::tls::{dial_name, Tls};
use p2ptrain_node::net::{build_swarm, keypair, NetConfig};
use p2ptrain_protocol::{Digest, SigningKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod timing;

use timing::{request_arrived, Clock, Plan, Times};

type Error = Box<dyn std::error::Error>;
type SendError = Box<dyn std::error::Error + Send + Sync>;

/// Payload transfer between two nodes on loopback, beside raw TCP and TLS
/// alone.
#[derive(clap::Parser)]
struct Args {
    /// Payload sizes in MiB, each measured in turn (repeat the flag; 1, 4,
    /// 16 and 64 when no size is given).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    mb: Vec<u32>,
    /// Payload sizes in KiB, measured before the MiB sizes (repeat the
    /// flag): a 1 KiB fetch shows what each fetch costs beside its bytes.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024 * 1024))]
    kib: Vec<u32>,
    /// Timed transfers of each kind on each connection, after its warm-up.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Connections of each kind, each opened afresh (for the fetch, a
    /// fresh pair of nodes): where the operating system runs a
    /// connection's two ends, on one core or two, changes its speed for as
    /// long as it lasts, so the medians pool the transfers of several.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    connections: u32,
    /// How long each connection carries untimed transfers before the timed
    /// ones (at least one): a fresh connection runs slower for a few
    /// milliseconds, until the operating system has settled where its two
    /// ends run.
    #[arg(long, default_value_t = 50)]
    warm_up_ms: u64,
    /// Where the serving node listens (TCP by default; a QUIC address such
    /// as `/ip4/127.0.0.1/udp/0/quic-v1` fetches over QUIC).
    #[arg(long, default_value = "/ip4/127.0.0.1/tcp/0")]
    listen: libp2p::Multiaddr,
    /// Fetch in a private swarm, as `p2pnode join --psk` runs one: both
    /// nodes hold the same pre-shared key, so every byte also passes
    /// pnet's XSalsa20 under the TLS (TCP only).
    #[arg(long)]
    private: bool,
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Args = clap::Parser::parse();
    // As `p2pnode join` does.
    p2ptrain_trainer::allocator::keep_freed_memory();
    p2ptrain_node::compute::start_compute_pool()?;
    let plan = Plan {
        warm_up: Duration::from_millis(args.warm_up_ms),
        runs: args.runs as usize,
    };
    let quic = args
        .listen
        .iter()
        .any(|p| matches!(p, libp2p::multiaddr::Protocol::QuicV1));
    let over = match (quic, args.private) {
        (true, true) => {
            return Err(
                "a private swarm speaks TCP only: drop --private or give a TCP --listen".into(),
            )
        }
        (true, false) => "QUIC",
        (false, true) => "TCP + pnet + TLS + yamux",
        (false, false) => "TCP + TLS + yamux",
    };
    let config = NetConfig {
        mdns: false,
        fetch_timeout: Duration::from_secs(120),
        psk: args.private.then(|| SwarmKey::new([9; 32])),
        ..NetConfig::default()
    };
    let fetch_header = format!("p2pnode fetch ({over})");
    println!(
        "{:>8}  {:>11}  {:>11}  {fetch_header:>25}  {:>27}  {:>17}",
        "payload", "raw TCP", "TLS alone", "fetch / raw (target >= 50%)", "fetch / TLS alone"
    );
    let mut sizes: Vec<usize> = args.kib.iter().map(|&k| (k as usize) << 10).collect();
    sizes.extend(args.mb.iter().map(|&m| (m as usize) << 20));
    if sizes.is_empty() {
        sizes = [1, 4, 16, 64].map(|m| m << 20).to_vec();
    }
    for bytes in sizes {
        let payload: Vec<u8> = (0..bytes).map(|i| (i * 31 % 251) as u8).collect();
        let (mut raw, mut tls, mut fetched) =
            (Times::default(), Times::default(), Times::default());
        // The kinds take turns, so that each meets the machine as it is
        // over the same stretch of time.
        for _ in 0..args.connections {
            raw.add_connection(raw_tcp(&payload, plan).await?);
            tls.add_connection(tls_alone(payload.clone().into(), plan).await?);
            fetched.add_connection(fetch(&payload, plan, args.listen.clone(), &config).await?);
        }
        let spread = format!(
            "{:>8}  each connection's median: raw TCP {}, TLS alone {}, fetch {}",
            "",
            raw.connection_range(),
            tls.connection_range(),
            fetched.connection_range()
        );
        let (raw, tls, fetch) = (raw.median(), tls.median(), fetched.median());
        let mb = bytes as f64 / 1e6;
        let size = if bytes < 1 << 20 {
            format!("{:4} KiB", bytes >> 10)
        } else {
            format!("{mb:5.1} MB")
        };
        println!(
            "{size:>8}  {:>11}  {:>11}  {:>w$}  {:>27}  {:>17}",
            format!("{:.0} MB/s", mb / raw),
            format!("{:.0} MB/s", mb / tls),
            format!("{:.0} MB/s ({:.2} ms)", mb / fetch, fetch * 1e3),
            format!("{:.0}%", 100.0 * raw / fetch),
            format!("{:.0}%", 100.0 * tls / fetch),
            w = fetch_header.len().max(25),
        );
        if args.connections > 1 {
            println!("{spread}");
        }
    }
    Ok(())
}

/// Transfers of `payload` over a plain socket, timed as `plan` says: a
/// one-byte request, then a length prefix and the bytes, read in full.
async fn raw_tcp(payload: &[u8], plan: Plan) -> Result<Vec<f64>, Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let to_send = payload.to_vec();
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await?;
        socket.set_nodelay(true)?;
        let mut request = [0u8; 1];
        while request_arrived(socket.read_exact(&mut request).await.map(drop))? {
            socket
                .write_all(&(to_send.len() as u64).to_le_bytes())
                .await?;
            socket.write_all(&to_send).await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let mut socket = TcpStream::connect(address).await?;
    socket.set_nodelay(true)?;
    let mut clock = Clock::new(plan);
    let mut buffer = vec![0u8; payload.len()];
    loop {
        clock.start();
        socket.write_all(&[1]).await?;
        let mut len = [0u8; 8];
        socket.read_exact(&mut len).await?;
        socket.read_exact(&mut buffer).await?;
        if clock.stop() {
            break;
        }
    }
    drop(socket);
    server.await??;
    if buffer != payload {
        return Err("raw TCP delivered other bytes".into());
    }
    Ok(clock.times)
}

/// Transfers of `payload` over TLS 1.3 on a plain socket, as [`raw_tcp`]
/// sends it, timed as `plan` says: the nodes' rustls configuration,
/// blocking reads and writes on two threads, no multiplexer, no runtime.
async fn tls_alone(payload: Arc<[u8]>, plan: Plan) -> Result<Vec<f64>, Error> {
    let server = Tls::new(&keypair(&SigningKey::from_bytes(&[1; 32]))?)?;
    let client = Tls::new(&keypair(&SigningKey::from_bytes(&[2; 32]))?)?;
    tokio::task::spawn_blocking(move || -> Result<Vec<f64>, SendError> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let address = listener.local_addr()?;
        let to_send = payload.clone();
        let sender = std::thread::spawn(move || -> std::io::Result<()> {
            let (socket, _) = listener.accept()?;
            socket.set_nodelay(true)?;
            let connection = rustls::ServerConnection::new(server.server_config())
                .map_err(std::io::Error::other)?;
            let mut stream = rustls::StreamOwned::new(connection, socket);
            let mut request = [0u8; 1];
            while request_arrived(stream.read_exact(&mut request))? {
                stream.write_all(&(to_send.len() as u64).to_le_bytes())?;
                stream.write_all(&to_send)?;
                stream.flush()?;
            }
            Ok(())
        });
        let socket = std::net::TcpStream::connect(address)?;
        socket.set_nodelay(true)?;
        let connection = rustls::ClientConnection::new(client.client_config(), dial_name())?;
        let mut stream = rustls::StreamOwned::new(connection, socket);
        let mut clock = Clock::new(plan);
        let mut buffer = vec![0u8; payload.len()];
        loop {
            clock.start();
            stream.write_all(&[1])?;
            stream.flush()?;
            let mut prefix = [0u8; 8];
            stream.read_exact(&mut prefix)?;
            stream.read_exact(&mut buffer)?;
            if clock.stop() {
                break;
            }
        }
        stream.conn.send_close_notify();
        stream.flush()?;
        drop(stream);
        sender.join().map_err(|_| "the TLS sender panicked")??;
        if buffer[..] != payload[..] {
            return Err("TLS delivered other bytes".into());
        }
        Ok(clock.times)
    })
    .await?
    .map_err(|e| -> Error { e })
}

/// Fetches of `payload` from one swarm by another, timed as `plan` says,
/// each from the request to the whole response. The two swarms
/// run in tasks of their own, as two nodes run in processes of their own
/// (so, like the two ends of the raw socket, on two threads); each task
/// drives its swarm and its fetch streams together, as a node's event loop
/// does.
async fn fetch(
    payload: &[u8],
    plan: Plan,
    listen: libp2p::Multiaddr,
    config: &NetConfig,
) -> Result<Vec<f64>, Error> {
    let mut server = build_swarm(&SigningKey::from_bytes(&[1; 32]), config)?;
    let client = build_swarm(&SigningKey::from_bytes(&[2; 32]), config)?;
    server.listen_on(listen)?;
    let server_id = *server.local_peer_id();
    let mut requests = fetch::serve(&mut server.behaviour().fetch.new_control())?;
    let (address_tx, mut address_rx) = tokio::sync::mpsc::channel(1);
    let served: Arc<[u8]> = Arc::from(payload);
    let server = tokio::spawn(async move {
        loop {
            tokio::select! {
                event = server.select_next_some() => {
                    if let SwarmEvent::NewListenAddr { address, .. } = event {
                        let _ = address_tx.send(address).await;
                    }
                }
                Some(request) = requests.recv() => request.respond(FetchResponse::Found {
                    header: Vec::new(),
                    body: served.clone(),
                }),
            }
        }
    });
    let result = tokio::time::timeout(Duration::from_secs(600), async {
        let address = address_rx.recv().await.ok_or("the server stopped")?;
        fetch_runs(
            client,
            address,
            server_id,
            payload,
            plan,
            config.fetch_timeout,
        )
        .await
    })
    .await;
    server.abort();
    result.map_err(|_| "the transfers did not finish in 10 minutes")?
}

/// The client's side of [`fetch`]: dials the server, then fetches.
async fn fetch_runs(
    mut client: libp2p::Swarm<p2ptrain_node::net::Behaviour>,
    address: libp2p::Multiaddr,
    server_id: libp2p::PeerId,
    payload: &[u8],
    plan: Plan,
    timeout: Duration,
) -> Result<Vec<f64>, Error> {
    let control = client.behaviour().fetch.new_control();
    let (mut fetcher, mut answers) = Fetcher::new(control, timeout, payload.len() as u64);
    client.dial(address)?;
    let id = Digest::of(payload);
    let mut clock = Clock::new(plan);
    let mut responses = 0usize;
    loop {
        tokio::select! {
            event = client.select_next_some() => {
                if let SwarmEvent::ConnectionEstablished { .. } = event {
                    clock.start();
                    fetcher.send(server_id, FetchRequest::Payload(id));
                }
            }
            Some(answer) = answers.recv() => {
                let done = clock.stop();
                let response = answer.result.map_err(|e| format!("fetch failed: {e}"))?;
                // The bytes are checked in full once, on the first
                // (untimed) transfer.
                let delivered = match &response {
                    FetchResponse::Found { body, .. } if responses > 0 => {
                        body.len() == payload.len()
                    }
                    FetchResponse::Found { body, .. } => &body[..] == payload,
                    FetchResponse::Missing => false,
                };
                if !delivered {
                    return Err("the fetch delivered other bytes".into());
                }
                responses += 1;
                if done {
                    return Ok(clock.times);
                }
                clock.start();
                fetcher.send(server_id, FetchRequest::Payload(id));
            }
        }
    }
}
