//! A process-wide budget for the bytes that streams hold for unfinished events (issue 12 #9).
//!
//! Each meter holds an unfinished event (up to its `max_event_size`) until the event ends, and
//! a paused one the bytes that arrived meanwhile. One stream is bounded by its limit; many are
//! bounded here: every meter reports what it holds, and when the total passes the budget the
//! largest holder is marked. A marked meter ends its stream with the format's error ending at
//! its next call (right away when it is the one reporting). Streams already marked no longer
//! count, so one overshoot marks one stream, not every stream in turn.
//!
//! Cost: a meter takes the lock only when what it holds changed since its last report; a
//! stream of whole events per read holds nothing and never does.
//!
//! Measured with `benches/pending_rss.py` (RSS, 15 MiB unfinished event per stream, 64 KiB
//! reads, this 2-core machine):
//! - before (decoder line + meter raw copy, no budget): 10 streams 15 -> 315 MiB, 30 MiB
//!   per stream (2.0x while the line is open; a third copy was made when it ended, which the
//!   proxy measured as ~2.7x); 30 streams 915 MiB.
//! - after, budget off: still 30 MiB per stream (2.0x: the decoder's data and the raw bytes
//!   kept for forwarding), but no third copy at the line end, growth capped at the limit,
//!   buffers released after a large event.
//! - after, default 256 MiB budget: 10 streams 225 MiB (3 ended), 30 streams 225 MiB (23
//!   ended): the total stays at the budget.
//! - since the decoder reads its values from the meter's raw bytes (`SseDecoder::feed_held`,
//!   one copy), reads taken in turn across the streams: budget off, 10 streams 15 -> 165 MiB,
//!   30 streams 15 -> 465 MiB, 15 MiB per stream (1.00x); default budget, 10 streams 165 MiB
//!   (none ended: 150 MiB is under it), 30 streams 255 MiB (14 ended). Same command on the
//!   code before: 2.00x, and 225 MiB (3 and 23 ended).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Default budget: room for sixteen streams each at the default 16 MiB event limit.
pub const DEFAULT_PENDING_BUDGET: u64 = 256 * 1024 * 1024;

/// The budget every meter shares unless its config names another (tests do).
pub static GLOBAL: Budget = Budget::new(DEFAULT_PENDING_BUDGET);

#[derive(Debug)]
pub struct Budget {
    /// 0: no budget.
    limit: AtomicU64,
    reg: Mutex<Registry>,
}

#[derive(Debug)]
struct Registry {
    total: u64,
    entries: Vec<Arc<Ticket>>,
}

#[derive(Debug, Default)]
struct Ticket {
    held: AtomicU64,
    evicted: AtomicBool,
}

impl Budget {
    pub const fn new(limit: u64) -> Self {
        Budget {
            limit: AtomicU64::new(limit),
            reg: Mutex::new(Registry {
                total: 0,
                entries: Vec::new(),
            }),
        }
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.reg.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Set the budget in bytes; `None` removes it.
    pub fn set_limit(&self, bytes: Option<u64>) {
        self.limit.store(bytes.unwrap_or(0), Ordering::Relaxed);
    }

    pub fn limit(&self) -> Option<u64> {
        match self.limit.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    /// Bytes held by all live meters, as last reported.
    pub fn total(&self) -> u64 {
        self.registry().total
    }
}

/// One meter's share of a budget.
#[derive(Debug)]
pub struct Account {
    budget: &'static Budget,
    ticket: Option<Arc<Ticket>>,
    reported: u64,
}

impl Clone for Account {
    /// A copy of a meter holds its own bytes: it starts unregistered.
    fn clone(&self) -> Self {
        Account::new(self.budget)
    }
}

impl Account {
    pub fn new(budget: &'static Budget) -> Self {
        Account {
            budget,
            ticket: None,
            reported: 0,
        }
    }

    /// Whether the budget picked this stream to end.
    #[inline]
    pub fn evicted(&self) -> bool {
        self.ticket
            .as_ref()
            .is_some_and(|t| t.evicted.load(Ordering::Relaxed))
    }

    /// Report the bytes this stream holds now. True when the stream must end.
    #[inline]
    pub fn report(&mut self, held: u64) -> bool {
        if held == self.reported {
            return self.evicted();
        }
        self.report_slow(held)
    }

    #[cold]
    fn report_slow(&mut self, held: u64) -> bool {
        let budget = self.budget;
        let mut reg = budget.registry();
        let ticket = match &self.ticket {
            Some(t) => t.clone(),
            None => {
                let t = Arc::new(Ticket::default());
                reg.entries.push(t.clone());
                self.ticket = Some(t.clone());
                t
            }
        };
        reg.total = reg.total - self.reported + held;
        ticket.held.store(held, Ordering::Relaxed);
        self.reported = held;
        if let Some(limit) = budget.limit() {
            let marked: u64 = reg
                .entries
                .iter()
                .filter(|t| t.evicted.load(Ordering::Relaxed))
                .map(|t| t.held.load(Ordering::Relaxed))
                .sum();
            if reg.total - marked > limit {
                if let Some(victim) = reg
                    .entries
                    .iter()
                    .filter(|t| !t.evicted.load(Ordering::Relaxed))
                    .max_by_key(|t| t.held.load(Ordering::Relaxed))
                {
                    victim.evicted.store(true, Ordering::Relaxed);
                }
            }
        }
        drop(reg);
        self.evicted()
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        if let Some(t) = self.ticket.take() {
            let mut reg = self.budget.registry();
            reg.total -= self.reported;
            reg.entries.retain(|e| !Arc::ptr_eq(e, &t));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_holder_is_marked_once_over_budget() {
        let budget: &'static Budget = Box::leak(Box::new(Budget::new(1000)));
        let total = || budget.total();
        let base = 0;
        let (mut a, mut b, mut c) = (
            Account::new(budget),
            Account::new(budget),
            Account::new(budget),
        );
        assert!(!a.report(300));
        assert!(!b.report(600));
        assert_eq!(total(), base + 900);
        // Over budget: the largest (b) is marked, not the reporter.
        assert!(!c.report(200));
        assert!(b.evicted() && !a.evicted());
        // Still over only because of b: nobody else is marked.
        assert!(!a.report(350));
        assert!(!a.evicted() && !c.evicted());
        drop(b);
        assert_eq!(total(), base + 550);
        // The reporter itself can be the largest.
        assert!(c.report(900));
        drop((a, c));
        assert_eq!(total(), base);
    }
}
