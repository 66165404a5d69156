//! A [`Checker`] that remembers: every simulated engine checks the same
//! signed messages and payloads, and each answer depends on the bytes alone,
//! so one process verifies each once.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use p2ptrain_node::engine::{validate, Checker, PayloadFacts, RejectReason};
use p2ptrain_protocol::{Commit, Contribution, Digest, Signed, SignedError};

type Verdicts<T> = HashMap<(Digest, [u8; 64]), Result<T, String>>;

#[derive(Debug, Default)]
struct Memory {
    contributions: Verdicts<Contribution>,
    commits: Verdicts<Commit>,
    payloads: HashMap<Digest, Result<PayloadFacts, RejectReason>>,
}

/// A caching [`Checker`] shared by all engines of one simulation.
#[derive(Debug, Clone, Default)]
pub struct SharedChecker(Rc<RefCell<Memory>>);

/// Looks `signed` up, verifying on a miss. Errors come back as
/// [`SignedError::BadSignature`]-like failures: the engine only needs to
/// know that the check failed.
fn remembered<T: p2ptrain_protocol::Signable + Clone>(
    memory: &mut Verdicts<T>,
    signed: &Signed<T>,
) -> Result<T, SignedError> {
    let key = (signed.id(), *signed.signature());
    let verdict = memory
        .entry(key)
        .or_insert_with(|| signed.verify().map_err(|e| e.to_string()));
    match verdict {
        Ok(value) => Ok(value.clone()),
        // Re-verify to hand back the typed error; failures are rare.
        Err(_) => signed.verify(),
    }
}

impl Checker for SharedChecker {
    fn contribution(&self, signed: &Signed<Contribution>) -> Result<Contribution, SignedError> {
        remembered(&mut self.0.borrow_mut().contributions, signed)
    }

    fn commit(&self, signed: &Signed<Commit>) -> Result<Commit, SignedError> {
        remembered(&mut self.0.borrow_mut().commits, signed)
    }

    fn payload(&self, bytes: &[u8]) -> Result<PayloadFacts, RejectReason> {
        let key = Digest::of(bytes);
        *self
            .0
            .borrow_mut()
            .payloads
            .entry(key)
            .or_insert_with(|| validate::payload_facts(bytes))
    }
}
