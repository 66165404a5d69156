//! The round records of a data directory as JSON: hex keys, hashes and
//! signatures, for people and scripts to read.

use p2ptrain_protocol::{Commit, Contribution, RoundRecord};
use serde_json::{json, Value};

use super::{ChainError, DataDir};

/// Every record of `dir` from round 0, as one JSON array.
///
/// # Errors
///
/// [`ChainError`] when a record cannot be read or its signatures fail.
pub fn history(dir: &DataDir) -> Result<Value, ChainError> {
    let mut rounds = Vec::new();
    let mut round = 0;
    while let Some(record) = dir.record(round)? {
        rounds.push(record_json(round, &record)?);
        round += 1;
    }
    Ok(Value::Array(rounds))
}

fn record_json(round: u64, record: &RoundRecord) -> Result<Value, ChainError> {
    let (commit, contributions) = record.verify().map_err(|e| ChainError::Record {
        round,
        what: e.to_string(),
    })?;
    let Commit {
        run,
        base,
        committer,
        result,
        chain_tokens,
        ..
    } = commit;
    let applied: Vec<Value> = contributions
        .iter()
        .zip(&record.contributions)
        .map(|(c, signed)| {
            let Contribution {
                author,
                tokens,
                payload,
                ..
            } = c;
            json!({
                "id": signed.id().to_hex(),
                "author": author.to_hex(),
                "tokens": tokens,
                "payload": payload.hash.to_hex(),
                "payload_len": payload.len,
                "signature": hex::encode(signed.signature()),
            })
        })
        .collect();
    Ok(json!({
        "round": round,
        "run": run.to_hex(),
        "base": base.to_hex(),
        "result": result.to_hex(),
        "chain_tokens": chain_tokens,
        "committer": committer.to_hex(),
        "commit_id": record.commit.id().to_hex(),
        "commit_signature": hex::encode(record.commit.signature()),
        "contributions": applied,
    }))
}
