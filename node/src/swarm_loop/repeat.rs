//! When a node announces its contribution again while its round gathers
//! contributions: one second after the first announcement, then at gaps
//! that double, up to half a minute. A peer that missed it hears it within
//! a second or two; a round that waits long costs a few small messages.
//!
//! ```text
//! announced at 0 s, again at 1, 3, 7, 15, 31, 61, 91, ... s
//! ```

use std::time::Duration;

use tokio::time::Instant;

/// The first gap.
const FIRST_GAP: Duration = Duration::from_secs(1);

/// The longest gap.
const LONGEST_GAP: Duration = Duration::from_secs(30);

/// When the next repeat is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Repeats {
    due: Instant,
    gap: Duration,
}

impl Repeats {
    /// Repeats of an announcement made at `announced`.
    pub fn after(announced: Instant) -> Self {
        Self {
            due: announced + FIRST_GAP,
            gap: FIRST_GAP,
        }
    }

    /// When the next repeat is due.
    pub fn due(&self) -> Instant {
        self.due
    }

    /// The repeat after the one made at `now`.
    pub fn next(self, now: Instant) -> Self {
        let gap = (self.gap * 2).min(LONGEST_GAP);
        Self {
            due: now + gap,
            gap,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_double_from_a_second_to_half_a_minute() {
        let start = Instant::now();
        let mut repeats = Repeats::after(start);
        let mut at = Vec::new();
        for _ in 0..8 {
            at.push((repeats.due() - start).as_secs());
            repeats = repeats.next(repeats.due());
        }
        assert_eq!(at, [1, 3, 7, 15, 31, 61, 91, 121]);
    }

    #[test]
    fn a_late_repeat_counts_its_gap_from_when_it_was_made() {
        let start = Instant::now();
        let late = start + Duration::from_secs(5);
        let repeats = Repeats::after(start).next(late);
        assert_eq!(repeats.due() - late, Duration::from_secs(2));
    }
}
