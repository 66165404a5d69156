//! The malicious peers' turn each round.

use p2ptrain_node::engine::{Engine, Input};
use p2ptrain_protocol::{Contribution, Signed};

use super::{Event, Role, SimError, Simulation};
use crate::adversary::{self, Context};

impl Simulation {
    pub(super) fn schedule_attack(&mut self, p: usize) {
        let Some(round) = self.peers[p].engine.as_ref().map(|e| e.head().round) else {
            return;
        };
        if self.peers[p].attacked_round.is_some_and(|r| r >= round) {
            return;
        }
        self.peers[p].attacked_round = Some(round);
        // Attack once honest updates of the round are about.
        let at = self.now + self.train_ms(p) + 200;
        let epoch = self.peers[p].epoch;
        self.push(
            at,
            Event::Attack {
                peer: p,
                epoch,
                round,
            },
        );
    }

    pub(super) fn attack(&mut self, p: usize, round: u64) -> Result<(), SimError> {
        let Role::Adversary { slot } = self.peers[p].role else {
            return Ok(());
        };
        let Some(adversary) = self.scenario.adversary.clone() else {
            return Ok(());
        };
        let Some(head) = self.peers[p].engine.as_ref().map(Engine::head) else {
            return Ok(());
        };
        if head.round != round {
            return Ok(());
        }
        let kind = adversary.kinds[(slot + round as usize) % adversary.kinds.len()];
        let Some(run) = self.peers[p].engine.as_ref().map(Engine::run) else {
            return Ok(());
        };
        // The lowest-id honest payload of this round the attacker can see.
        let honest = self
            .bodies
            .iter()
            .filter(|(id, _)| self.honest_ids.contains(id))
            .filter_map(|(id, (signed, bytes))| {
                let c = self.checker_contribution(signed)?;
                (c.round == round && c.base == head.base).then_some((*id, bytes.clone()))
            })
            .min_by_key(|(id, _)| *id)
            .map(|(_, bytes)| bytes);
        let applied_before = self.peers[p]
            .last_record
            .as_ref()
            .and_then(|r| r.contributions.first().cloned());
        let key = self.peers[p].key.clone();
        let cx = Context {
            key: &key,
            run,
            round,
            base: head.base,
            tokens: self.tokens_per_update,
            settings: self.manifest.compression,
            len: self.proxy_len,
            honest: honest.as_deref(),
            applied_before: applied_before.as_ref(),
            factor: adversary.factor,
        };
        let Some(attack) = adversary::craft(kind, &cx, &mut self.rng)? else {
            return Ok(());
        };
        let id = attack.contribution.id();
        if self.honest_ids.contains(&id) {
            // A replay re-sends an honest peer's old contribution.
            self.replayed.insert(id);
        } else {
            self.adversary_ids.insert(id);
        }
        if let Some(payload) = attack.payload {
            self.bodies
                .insert(id, (attack.contribution.clone(), payload));
            self.holders.insert(id, vec![p]);
        } else if !self.bodies.contains_key(&id) {
            self.holders.remove(&id);
        }
        let Some((twin, twin_payload)) = attack.twin else {
            return self.broadcast(p, Input::Announced(attack.contribution));
        };
        // Equivocation: peers of even index hear one, the others the twin.
        let twin_id = twin.id();
        self.adversary_ids.insert(twin_id);
        self.bodies.insert(twin_id, (twin.clone(), twin_payload));
        self.holders.insert(twin_id, vec![p]);
        let first = Input::Announced(attack.contribution);
        let second = Input::Announced(twin);
        self.broadcast_to(p, &first, |q| q % 2 == 0)?;
        self.broadcast_to(p, &second, |q| q % 2 == 1)
    }

    pub(super) fn checker_contribution(
        &self,
        signed: &Signed<Contribution>,
    ) -> Option<Contribution> {
        use p2ptrain_node::engine::Checker;
        self.checker.contribution(signed).ok()
    }
}
