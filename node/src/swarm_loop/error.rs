//! Why a node stops, and how a libp2p error is told to a person.

use libp2p::Multiaddr;

use super::ReplicaError;
use crate::chain::ChainError;
use crate::engine::EngineError;
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

#[cfg(test)]
mod tests {
    use super::with_causes;

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

    #[tokio::test]
    async fn a_listen_error_names_its_cause() {
        let mut swarm = crate::net::build_swarm(
            &p2ptrain_protocol::SigningKey::from_bytes(&[7; 32]),
            &crate::net::NetConfig {
                mdns: false,
                ..crate::net::NetConfig::default()
            },
        )
        .unwrap();
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
