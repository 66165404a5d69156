//! Simulated links: latency, bandwidth and loss per peer, uploads and
//! downloads that queue, and partitions that cut groups apart.

use crate::rng::Rng;
use crate::scenario::LinkProfile;

/// Virtual milliseconds.
pub type Millis = u64;

/// Most retransmissions of one message before it gets through.
const MAX_RETRIES: u32 = 10;

/// One peer's link and how busy it is.
#[derive(Debug, Clone)]
pub struct Port {
    /// Latency, bandwidth and loss.
    pub profile: LinkProfile,
    /// The group the peer belongs to (partitions cut groups).
    pub group: usize,
    /// When the upload side is next free.
    pub up_free: Millis,
    /// When the download side is next free.
    pub down_free: Millis,
}

/// Every peer's port and the cuts in force.
#[derive(Debug, Clone, Default)]
pub struct Network {
    ports: Vec<Port>,
    /// Groups cut off from everyone else, one set per active partition.
    cuts: Vec<Vec<usize>>,
}

/// When a transfer starts and ends, on the sender's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    /// The first byte leaves.
    pub start: Millis,
    /// The last byte arrives.
    pub arrival: Millis,
}

impl Network {
    /// Adds a peer; returns its index.
    pub fn add(&mut self, profile: LinkProfile, group: usize) -> usize {
        self.ports.push(Port {
            profile,
            group,
            up_free: 0,
            down_free: 0,
        });
        self.ports.len() - 1
    }

    /// A peer's port.
    pub fn port(&self, peer: usize) -> &Port {
        &self.ports[peer]
    }

    /// Cuts `groups` off from the rest.
    pub fn cut(&mut self, groups: Vec<usize>) {
        self.cuts.push(groups);
    }

    /// Heals the cut of exactly `groups`.
    pub fn heal(&mut self, groups: &[usize]) {
        self.cuts.retain(|c| c != groups);
    }

    /// Whether `a` and `b` can talk.
    pub fn reachable(&self, a: usize, b: usize) -> bool {
        let (ga, gb) = (self.ports[a].group, self.ports[b].group);
        self.cuts
            .iter()
            .all(|cut| cut.contains(&ga) == cut.contains(&gb))
    }

    /// One-way latency between two peers: the mean of their latencies.
    pub fn latency(&self, a: usize, b: usize) -> f64 {
        (self.ports[a].profile.latency_ms + self.ports[b].profile.latency_ms) / 2.0
    }

    /// The extra delay of losses on a path with the worse loss of the two:
    /// each loss costs a round trip before the retransmission.
    fn loss_delay(&self, a: usize, b: usize, rng: &mut Rng) -> f64 {
        let loss = self.ports[a].profile.loss.max(self.ports[b].profile.loss);
        if loss <= 0.0 {
            return 0.0;
        }
        let mut retries = 0;
        while retries < MAX_RETRIES && rng.uniform() < loss {
            retries += 1;
        }
        f64::from(retries) * 2.0 * self.latency(a, b)
    }

    /// Time to push `bytes` through the slower of two links, ms.
    fn wire_ms(&self, a: usize, b: usize, bytes: u64) -> f64 {
        let mbps = self.ports[a]
            .profile
            .bandwidth_mbps
            .min(self.ports[b].profile.bandwidth_mbps);
        bytes as f64 * 8.0 / (mbps * 1000.0)
    }

    /// When a small message sent at `now` arrives (it does not queue behind
    /// bulk transfers: it travels on its own stream).
    pub fn message(
        &self,
        now: Millis,
        from: usize,
        to: usize,
        bytes: u64,
        rng: &mut Rng,
    ) -> Millis {
        let ms =
            self.latency(from, to) + self.wire_ms(from, to, bytes) + self.loss_delay(from, to, rng);
        now + ms.ceil() as Millis
    }

    /// When a bulk transfer requested at `now` would start and arrive,
    /// without booking it.
    ///
    /// The sender's upload and the receiver's download are two queues, each
    /// serving one transfer at a time at the slower link's rate; the last
    /// byte arrives when both have carried it. (A download waiting on a busy
    /// sender does not hold the receiver's link idle for others.)
    pub fn plan(&self, now: Millis, from: usize, to: usize, bytes: u64) -> Transfer {
        let request = now + self.latency(from, to).ceil() as Millis;
        let wire = self.wire_ms(from, to, bytes).ceil() as Millis;
        let start = request.max(self.ports[from].up_free);
        let down_start = request.max(self.ports[to].down_free);
        let arrival =
            (start + wire).max(down_start + wire) + self.latency(from, to).ceil() as Millis;
        Transfer { start, arrival }
    }

    /// Books a bulk transfer on both queues; losses add round trips.
    pub fn book(
        &mut self,
        now: Millis,
        from: usize,
        to: usize,
        bytes: u64,
        rng: &mut Rng,
    ) -> Transfer {
        let plan = self.plan(now, from, to, bytes);
        let request = now + self.latency(from, to).ceil() as Millis;
        let wire = self.wire_ms(from, to, bytes).ceil() as Millis;
        let lost = self.loss_delay(from, to, rng).ceil() as Millis;
        self.ports[from].up_free = plan.start + wire + lost;
        self.ports[to].down_free = request.max(self.ports[to].down_free) + wire + lost;
        Transfer {
            start: plan.start,
            arrival: plan.arrival + lost,
        }
    }

    /// When a checkpoint download requested at `now` arrives. Checkpoints
    /// travel on their own stream at the path's full rate and neither wait
    /// for nor hold up payload transfers: a joiner's download is not allowed
    /// to starve the round it is joining (real peers rate-limit it).
    pub fn side_transfer(
        &self,
        now: Millis,
        from: usize,
        to: usize,
        bytes: u64,
        rng: &mut Rng,
    ) -> Millis {
        let ms = 2.0 * self.latency(from, to)
            + self.wire_ms(from, to, bytes)
            + self.loss_delay(from, to, rng);
        now + ms.ceil() as Millis
    }

    /// The duration of a bulk transfer on an idle path, ms.
    pub fn idle_duration(&self, from: usize, to: usize, bytes: u64) -> Millis {
        self.wire_ms(from, to, bytes).ceil() as Millis
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(latency_ms: f64, bandwidth_mbps: f64) -> LinkProfile {
        LinkProfile {
            latency_ms,
            bandwidth_mbps,
            loss: 0.0,
        }
    }

    #[test]
    fn transfers_queue_on_the_sender_and_take_size_over_bandwidth() {
        let mut net = Network::default();
        let a = net.add(link(10.0, 8.0), 0);
        let b = net.add(link(30.0, 100.0), 0);
        let c = net.add(link(10.0, 100.0), 0);
        let mut rng = Rng::new(0);
        // 1 MB at 8 Mbit/s: 1 s; latency 20 ms each way.
        let first = net.book(0, a, b, 1_000_000, &mut rng);
        assert_eq!(
            first,
            Transfer {
                start: 20,
                arrival: 1_040
            }
        );
        let second = net.book(0, a, c, 1_000_000, &mut rng);
        assert_eq!(second.start, 1_020, "waits for the uplink");
        assert_eq!(net.message(0, a, b, 100, &mut rng), 21);
    }

    #[test]
    fn partitions_cut_only_across_groups() {
        let mut net = Network::default();
        let a = net.add(LinkProfile::default(), 0);
        let b = net.add(LinkProfile::default(), 1);
        let c = net.add(LinkProfile::default(), 1);
        net.cut(vec![1]);
        assert!(!net.reachable(a, b));
        assert!(net.reachable(b, c));
        net.heal(&[1]);
        assert!(net.reachable(a, b));
    }
}
