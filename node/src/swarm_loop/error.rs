//! Why a node stops, and how a libp2p error is told to a person.

use libp2p::swarm::DialError;
use libp2p::Multiaddr;

use super::ReplicaError;
use crate::chain::ChainError;
use crate::engine::EngineError;
use crate::net::private::KeyCheckError;
use crate::net::NetError;

/// Why a node stopped.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The network could not be set up.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The engine refused to start.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The data directory failed.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// Training failed.
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    /// An address could not be listened on or dialed.
    #[error("address {0}: {1}")]
    Address(Multiaddr, String),
}

impl NodeError {
    /// Whether the node stopped for want of disk space
    /// ([`ChainError::is_disk_full`]).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Self::Chain(error) if error.is_disk_full())
    }
}

/// `error` and what caused it, each message once: libp2p's transport
/// errors leave their own message empty and put it in their source.
pub(super) fn with_causes(error: &dyn std::error::Error) -> String {
    let mut messages: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(error) = next {
        let message = error.to_string();
        if !message.is_empty() && !messages.iter().any(|m| m.contains(&message)) {
            messages.push(message);
        }
        next = error.source();
    }
    messages.join(": ")
}

/// A failed dial told in one line: for each address tried, `ADDRESS:
/// reason` (libp2p's own message wraps the list in a sentence and repeats
/// each reason). In a private swarm (`private`), a dial that reached its
/// peer but failed in the handshakes that follow is most likely a peer
/// with another pre-shared key (the key check names it, when both ends
/// run it): the line points at the `--psk` file.
pub(super) fn dial_failure(error: &DialError, private: bool) -> String {
    let told = match error {
        DialError::Transport(attempts) if !attempts.is_empty() => attempts
            .iter()
            .map(|(address, error)| format!("{address}: {}", with_causes(error)))
            .collect::<Vec<_>>()
            .join("; "),
        other => with_causes(other),
    };
    if private && handshake_failed(error) {
        format!("{told} (in a private swarm every node needs the same --psk file)")
    } else {
        told
    }
}

/// Whether a connection failed because its peer holds another pre-shared
/// key (the key check of [`crate::net::private`] said so).
pub(super) fn other_key(error: &dyn std::error::Error) -> bool {
    with_causes(error).contains(&KeyCheckError::OtherKey.to_string())
}

/// Whether a dial reached some address but failed in the upgrade of the
/// connection (the pre-shared key check, protocol negotiation, the
/// security handshake) or timed out there, as those failures are worded.
fn handshake_failed(error: &DialError) -> bool {
    const UPGRADE_FAILURES: [&str; 3] = [
        "Multistream select failed",
        "Handshake failed",
        "Timeout has been reached",
    ];
    let DialError::Transport(attempts) = error else {
        return false;
    };
    attempts.iter().any(|(_, error)| {
        let told = with_causes(error);
        other_key(error)
            || UPGRADE_FAILURES
                .iter()
                .any(|failure| told.contains(failure))
    })
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use libp2p::swarm::SwarmEvent;

    use super::{dial_failure, with_causes};

    /// An error with a message and an optional cause.
    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn causes_are_joined_each_once_and_empty_messages_skipped() {
        let os = Layer("permission denied", None);
        let empty = Layer("", Some(Box::new(os)));
        assert_eq!(with_causes(&empty), "permission denied");
        let repeated = Layer(
            "bind: permission denied",
            Some(Box::new(Layer("permission denied", None))),
        );
        assert_eq!(with_causes(&repeated), "bind: permission denied");
        let two = Layer(
            "listening",
            Some(Box::new(Layer("permission denied", None))),
        );
        assert_eq!(with_causes(&two), "listening: permission denied");
    }

    /// A swarm with every behaviour but mDNS, its key drawn from `seed`.
    fn swarm(seed: u8) -> libp2p::Swarm<crate::net::Behaviour> {
        crate::net::build_swarm(
            &p2ptrain_protocol::SigningKey::from_bytes(&[seed; 32]),
            &crate::net::NetConfig {
                mdns: false,
                ..crate::net::NetConfig::default()
            },
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_refused_dial_is_one_address_and_one_reason() {
        let mut swarm = swarm(8);
        // A port that was free a moment ago: nothing listens on it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address: libp2p::Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
        swarm.dial(address.clone()).unwrap();
        let failed = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            loop {
                if let SwarmEvent::OutgoingConnectionError { error, .. } =
                    swarm.select_next_some().await
                {
                    break error;
                }
            }
        })
        .await
        .expect("a dial to a closed port fails at once");
        let told = dial_failure(&failed, false);
        // Nothing was reached: no word on pre-shared keys, private or not.
        assert_eq!(dial_failure(&failed, true), told);
        let reason = told
            .strip_prefix(&format!("{address}: "))
            .unwrap_or_else(|| panic!("{told}"));
        // The operating system's words, once ("Connection refused (os
        // error 111)" on Linux).
        let said = reason.to_lowercase();
        assert_eq!(said.matches("connection refused").count(), 1, "{told}");
        assert!(!said.contains(": "), "{told}");
    }

    #[tokio::test]
    async fn a_dial_to_a_node_with_another_pre_shared_key_names_the_key() {
        let private = |seed: u8, psk: u8| {
            crate::net::build_swarm(
                &p2ptrain_protocol::SigningKey::from_bytes(&[seed; 32]),
                &crate::net::NetConfig {
                    mdns: false,
                    psk: Some(crate::net::access::SwarmKey::new([psk; 32])),
                    ..crate::net::NetConfig::default()
                },
            )
            .unwrap()
        };
        let (mut host, mut outsider) = (private(5, 1), private(6, 2));
        host.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
            .unwrap();
        let failed = tokio::time::timeout(std::time::Duration::from_secs(60), async {
            loop {
                tokio::select! {
                    event = host.select_next_some() => {
                        if let SwarmEvent::NewListenAddr { address, .. } = event {
                            outsider.dial(address).unwrap();
                        }
                    }
                    event = outsider.select_next_some() => {
                        if let SwarmEvent::OutgoingConnectionError { error, .. } = event {
                            break error;
                        }
                    }
                }
            }
        })
        .await
        .expect("the dial fails within a minute");
        let told = dial_failure(&failed, true);
        // The key check tells the mismatch itself, not a failure after it.
        assert!(
            told.contains(": the peer holds another pre-shared key ("),
            "{told}"
        );
        assert!(told.ends_with("needs the same --psk file)"), "{told}");
        assert!(!dial_failure(&failed, false).contains("--psk"));
    }

    #[tokio::test]
    async fn a_listen_error_names_its_cause() {
        let mut swarm = swarm(7);
        // An address of no interface here (TEST-NET-1): the bind fails at
        // once, and libp2p's error keeps the reason in its source only.
        let error = swarm
            .listen_on("/ip4/192.0.2.1/tcp/1".parse().unwrap())
            .unwrap_err();
        assert_eq!(error.to_string(), "");
        let innermost =
            std::iter::successors(Some(&error as &dyn std::error::Error), |e| e.source())
                .last()
                .unwrap()
                .to_string();
        assert!(!innermost.is_empty());
        assert_eq!(with_causes(&error), innermost);
    }
}
