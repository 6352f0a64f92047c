//! Outbound pacing: IB disconnects a client that sends more than 50 messages in a second
//! (error 100), so every request the engine sends passes this budget first.
//!
//! A sliding one-second window over the send times of the last `limit` messages: a message may
//! go when the oldest of them is at least a second old. Fixed memory, no allocation after
//! construction, and the caller passes `now` (ns, monotonic).

/// One second in nanoseconds.
pub const SECOND_NS: u64 = 1_000_000_000;

/// A sliding-window message budget.
#[derive(Debug, Clone)]
pub struct Pacer {
    /// Send times of the most recent messages, a ring of `limit` entries.
    sent: Box<[u64]>,
    /// Index of the oldest entry.
    oldest: usize,
    /// Entries in use (< limit until the window first fills).
    used: usize,
    window_ns: u64,
}

impl Pacer {
    /// A budget of `limit` messages per second (`limit` >= 1).
    pub fn new(limit: u32) -> Pacer {
        Pacer::with_window(limit, SECOND_NS)
    }

    /// A budget of `limit` messages per `window_ns`.
    pub fn with_window(limit: u32, window_ns: u64) -> Pacer {
        let limit = limit.max(1) as usize;
        Pacer {
            sent: vec![0; limit].into_boxed_slice(),
            oldest: 0,
            used: 0,
            window_ns,
        }
    }

    /// The budget in messages per window.
    pub fn limit(&self) -> usize {
        self.sent.len()
    }

    /// True when a message may be sent at `now`.
    pub fn can_send(&self, now: u64) -> bool {
        self.used < self.sent.len() || now.saturating_sub(self.sent[self.oldest]) >= self.window_ns
    }

    /// Records a message sent at `now`. Returns false (and records nothing) when the budget
    /// does not allow it: the caller must wait until [`Pacer::next_slot`].
    pub fn try_send(&mut self, now: u64) -> bool {
        if !self.can_send(now) {
            return false;
        }
        if self.used < self.sent.len() {
            let idx = (self.oldest + self.used) % self.sent.len();
            self.sent[idx] = now;
            self.used += 1;
        } else {
            self.sent[self.oldest] = now;
            self.oldest = (self.oldest + 1) % self.sent.len();
        }
        true
    }

    /// The earliest time a message may be sent (`now` itself when it may go now).
    pub fn next_slot(&self, now: u64) -> u64 {
        if self.can_send(now) {
            now
        } else {
            self.sent[self.oldest] + self.window_ns
        }
    }

    /// How many more messages may go at `now` without waiting.
    pub fn available(&self, now: u64) -> usize {
        let n = self.sent.len();
        let expired = (0..self.used)
            .map(|i| self.sent[(self.oldest + i) % n])
            .take_while(|&t| now.saturating_sub(t) >= self.window_ns)
            .count();
        n - self.used + expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn allows_the_limit_then_waits_a_second() {
        let mut p = Pacer::new(3);
        assert!(p.try_send(0));
        assert!(p.try_send(10));
        assert!(p.try_send(20));
        assert!(!p.try_send(30));
        assert_eq!(p.next_slot(30), SECOND_NS);
        assert!(!p.try_send(SECOND_NS - 1));
        assert!(p.try_send(SECOND_NS));
        assert_eq!(p.next_slot(SECOND_NS), SECOND_NS + 10);
        assert_eq!(p.available(SECOND_NS + 20), 2);
    }

    proptest! {
        /// Whatever the caller does, no one-second window ever holds more than `limit` sends.
        #[test]
        fn never_more_than_limit_in_any_window(
            limit in 1u32..60,
            steps in proptest::collection::vec(0u64..200_000_000, 1..400),
        ) {
            let mut p = Pacer::new(limit);
            let mut now = 0u64;
            let mut sent = Vec::new();
            for dt in steps {
                now += dt;
                while p.try_send(now) {
                    sent.push(now);
                }
                prop_assert!(p.next_slot(now) > now);
            }
            for (i, &t) in sent.iter().enumerate() {
                let in_window = sent[i..].iter().take_while(|&&u| u < t + SECOND_NS).count();
                prop_assert!(in_window <= limit as usize);
            }
        }
    }
}
