//! How old a ledger's oldest unexported entry is, from timestamps the
//! supervisor already holds: the first id and ts of each append wake-up and
//! of each batch a job read. Never a storage read, so `GET /v1/health` and
//! the status page cost nothing however many ledgers there are.
//!
//! **Invariant:** a mark `(id, ts)` says entry `id` was stamped `ts`. Entry
//! timestamps never decrease within a ledger, so the last mark at or before
//! `cursor + 1` gives a ts no later than that entry's: the age told is never
//! younger than the truth. Marks are bounded per ledger; thinning drops the
//! mark whose loss widens a gap least, so the age errs old by that gap.

use std::collections::VecDeque;

use ferry_core::EntryId;
use ferry_core::limits::EXPORT_AGE_MARKS_MAX;

/// The marks of one ledger, ids ascending.
#[derive(Debug, Default)]
pub(crate) struct Marks {
    marks: VecDeque<(EntryId, u64)>,
}

impl Marks {
    /// Entry `id` was stamped `ts`. A mark older than the newest is ignored
    /// unless it sharpens what is known about an earlier id.
    pub fn note(&mut self, id: EntryId, ts: u64) {
        let at = self.marks.partition_point(|&(m, _)| m < id);
        if self.marks.get(at).is_some_and(|&(m, _)| m == id) {
            return;
        }
        self.marks.insert(at, (id, ts));
        if self.marks.len() > EXPORT_AGE_MARKS_MAX {
            self.thin();
        }
    }

    /// The cursor moved to `cursor`: marks before the one that covers
    /// `cursor + 1` are of no more use.
    pub fn exported_through(&mut self, cursor: EntryId) {
        let covering = self.marks.partition_point(|&(m, _)| m <= cursor + 1);
        if covering > 1 {
            self.marks.drain(..covering - 1);
        }
    }

    /// The timestamp of entry `cursor + 1` (or one no later), when the
    /// ledger is behind (`cursor < head`) and a mark covers it.
    pub fn oldest_unexported_ts(&self, cursor: EntryId, head: EntryId) -> Option<u64> {
        if cursor >= head {
            return None;
        }
        let covering = self.marks.partition_point(|&(m, _)| m <= cursor + 1);
        covering.checked_sub(1).map(|i| self.marks[i].1)
    }

    /// The age in milliseconds of the oldest unexported entry at `now_ms`:
    /// `Some(0)` when caught up, `None` when behind with no mark yet.
    pub fn age_ms(&self, cursor: EntryId, head: EntryId, now_ms: u64) -> Option<u64> {
        if cursor >= head {
            return Some(0);
        }
        self.oldest_unexported_ts(cursor, head).map(|ts| now_ms.saturating_sub(ts))
    }

    /// Drops the interior mark whose neighbours are closest in time: the
    /// age told for ids it covered now comes from the mark before it.
    fn thin(&mut self) {
        let drop = (1..self.marks.len() - 1).min_by_key(|&i| self.marks[i + 1].1 - self.marks[i - 1].1);
        if let Some(i) = drop {
            self.marks.remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caught_up_is_zero_and_unknown_without_a_mark() {
        let marks = Marks::default();
        assert_eq!(marks.age_ms(5, 5, 1_000), Some(0));
        assert_eq!(marks.age_ms(4, 5, 1_000), None);
    }

    #[test]
    fn the_covering_mark_tells_the_age() {
        let mut marks = Marks::default();
        marks.note(1, 100);
        marks.note(11, 200);
        marks.note(21, 300);
        assert_eq!(marks.age_ms(0, 30, 1_000), Some(900));
        // Entry 6 is in the commit that began at 1, stamped 100.
        assert_eq!(marks.age_ms(5, 30, 1_000), Some(900));
        assert_eq!(marks.age_ms(10, 30, 1_000), Some(800));
        marks.exported_through(15);
        assert_eq!(marks.age_ms(15, 30, 1_000), Some(800));
        assert_eq!(marks.age_ms(20, 30, 1_000), Some(700));
        assert_eq!(marks.age_ms(30, 30, 1_000), Some(0));
    }

    #[test]
    fn thinning_keeps_the_age_never_younger() {
        let mut marks = Marks::default();
        for i in 0..(EXPORT_AGE_MARKS_MAX as u64 * 4) {
            marks.note(i * 10 + 1, 1_000 + i * i);
        }
        assert!(marks.marks.len() <= EXPORT_AGE_MARKS_MAX);
        for cursor in 0..(EXPORT_AGE_MARKS_MAX as u64 * 40) {
            let truth = 1_000 + (cursor / 10).pow(2);
            let told = marks.oldest_unexported_ts(cursor, u64::MAX).expect("covered");
            assert!(told <= truth, "cursor {cursor}: told {told} > truth {truth}");
        }
        // The first mark is never thinned: every id stays covered.
        assert_eq!(marks.marks.front(), Some(&(1, 1_000)));
    }

    #[test]
    fn an_exact_read_sharpens_an_earlier_id() {
        let mut marks = Marks::default();
        marks.note(1, 100);
        marks.note(50, 500);
        marks.note(20, 300);
        assert_eq!(marks.oldest_unexported_ts(19, 60), Some(300));
    }
}
