//! Set-ups that the in-process node tests share.

use p2ptrain_node::chain::DataDir;
use p2ptrain_node::net::NetConfig;
use p2ptrain_node::swarm_loop::{NodeSetup, Training};
use p2ptrain_protocol::SigningKey;
use p2ptrain_trainer::device::{Device, RESIDUAL_DECAY};

/// Network settings for nodes on loopback: no mDNS.
pub fn loopback_net() -> NetConfig {
    NetConfig {
        mdns: false,
        ..NetConfig::default()
    }
}

/// A node on `data`, with the key of 32 bytes `key`, listening on
/// loopback, that trains a CPU replica on `tokens`.
pub fn cpu_node(data: DataDir, key: u8, net: NetConfig, tokens: Vec<u8>) -> NodeSetup {
    NodeSetup {
        data,
        key: SigningKey::from_bytes(&[key; 32]),
        net,
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        training: Training::Replica {
            tokens,
            device: Device::Cpu,
            residual_decay: RESIDUAL_DECAY,
        },
    }
}
