//! `p2pnode`: run a p2ptrain peer.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use p2ptrain_node::keyfile;
use p2ptrain_protocol::PeerKey;

/// A peer of a p2ptrain swarm: trains a shared model with other peers, no
/// server in between.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a node identity: an ed25519 key that names this peer on the
    /// network and signs its contributions. Prints the public key.
    Keygen {
        /// Where to write the key (created owner-readable only; an existing
        /// file is never overwritten).
        #[arg(long, default_value = "node.key")]
        out: PathBuf,
    },
    /// Print the public key of an existing key file.
    Pubkey {
        /// The key file.
        #[arg(long, default_value = "node.key")]
        key: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Keygen { out } => {
            let key = keyfile::generate()?;
            keyfile::save(&out, &key).context("writing the new key")?;
            println!("{}", PeerKey::from(&key));
            eprintln!("wrote {}", out.display());
        }
        Command::Pubkey { key } => {
            let key = keyfile::load(&key)?;
            println!("{}", PeerKey::from(&key));
        }
    }
    Ok(())
}
