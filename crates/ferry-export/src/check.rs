//! The range check (`ferry exporters check`, `GET /v1/exporters/{name}/check`):
//! does the destination hold exactly ids `First..=cursor` of each ledger?
//! The sink counts (`Sink::check`); this module judges, the same way for
//! every sink. Pure, unit-tested.
//!
//! A gap or a repeat inside `First..=cursor` is a fault. Ids below First
//! (exported, then pruned by retention) and above the cursor (delivered,
//! acknowledgement not yet written) are information.
//!
//! For a chained ledger (`docs/format.md`, "Hash chain") a sink that can
//! read its rows back in id order also recomputes the chain over them with
//! [`ChainWalk`]; the first id where it breaks is a fault too. Counts
//! alone miss a row whose payload was changed in place, and a deleted row
//! replaced by another with its id: the chain does not.

use ferry_core::{EntryId, LedgerName};
use ferry_format::chain::{self, ChainHash};
use serde::{Deserialize, Serialize};

use crate::sink::{ChainCheck, ChainStart, Holding};

/// The check of one exporter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckReport {
    pub exporter: LedgerName,
    pub sink: String,
    /// True when no ledger has a fault (a sink that cannot be asked has
    /// none, and says so in `notes`).
    pub ok: bool,
    pub ledgers: Vec<LedgerCheck>,
}

/// The check of one ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LedgerCheck {
    pub ledger: LedgerName,
    pub incarnation: u64,
    /// The ledger's First and the exporter's cursor: the destination should
    /// hold exactly `first..=cursor` (nothing when `cursor < first`).
    #[schema(value_type = u64)]
    pub first: EntryId,
    #[schema(value_type = u64)]
    pub cursor: EntryId,
    /// What the sink counted; absent when it cannot be asked or failed.
    pub holding: Option<Holding>,
    /// Each a sentence: a gap, repeats, or the sink's error.
    pub faults: Vec<String>,
    /// Each a sentence: ids below First or above the cursor, or why the
    /// sink was not asked.
    pub notes: Vec<String>,
}

impl LedgerCheck {
    /// Judges what the sink counted against `first..=cursor`.
    pub fn judge(ledger: LedgerName, incarnation: u64, first: EntryId, cursor: EntryId, holding: Holding) -> Self {
        let expected = (cursor + 1).saturating_sub(first);
        let mut faults = Vec::new();
        let mut notes = Vec::new();
        if holding.distinct < expected {
            let missing = expected - holding.distinct;
            faults.push(format!(
                "{missing} of ids {first}..={cursor} missing (holds {} of {expected})",
                holding.distinct
            ));
        }
        if holding.distinct > expected {
            // The sink counted ids in the range that cannot all be distinct
            // ids of it: its count is wrong, which is a fault too.
            faults
                .push(format!("{} distinct ids counted in {first}..={cursor}, which has {expected}", holding.distinct));
        }
        if holding.in_range > holding.distinct {
            let repeats = holding.in_range - holding.distinct;
            faults.push(format!("{repeats} repeated rows among ids {first}..={cursor}"));
        }
        match &holding.chain {
            Some(ChainCheck::Broken { id, reason }) => faults.push(format!("chain breaks at id {id}: {reason}")),
            Some(ChainCheck::Uncheckable { why }) => notes.push(format!("the hash chain cannot be checked: {why}")),
            Some(ChainCheck::Intact { .. }) | None => {}
        }
        if holding.below_first > 0 {
            notes
                .push(format!("{} rows below First {first} (exported, then pruned by retention)", holding.below_first));
        }
        if holding.above_cursor > 0 {
            notes.push(format!(
                "{} rows above the cursor {cursor} (delivered, acknowledgement not yet written)",
                holding.above_cursor
            ));
        }
        Self { ledger, incarnation, first, cursor, holding: Some(holding), faults, notes }
    }

    /// A ledger the sink could not count.
    pub fn unknown(
        ledger: LedgerName,
        incarnation: u64,
        first: EntryId,
        cursor: EntryId,
        why: Result<(), String>,
    ) -> Self {
        let (faults, notes) = match why {
            Ok(()) => (Vec::new(), vec!["this sink cannot be asked what it holds".to_owned()]),
            Err(error) => (vec![format!("the destination could not be asked: {error}")], Vec::new()),
        };
        Self { ledger, incarnation, first, cursor, holding: None, faults, notes }
    }
}

/// One row as a destination holds it, for [`ChainWalk::push`]: the
/// fields the chain hashes, and the hash written with them (lower-case
/// hex, as every sink writes it).
#[derive(Debug, Clone, Copy)]
pub struct ChainRow<'a> {
    pub id: EntryId,
    pub ts: u64,
    pub key: Option<&'a str>,
    /// The payload's exact text, as the entry carried it.
    pub payload: &'a [u8],
    pub hash: Option<&'a str>,
}

/// Recomputes a chained ledger's hash chain over a destination's rows,
/// fed one at a time in id order (so a sink streams them and never holds
/// them all), and finds the first id where it breaks:
///
/// - the row at First must chain from the store's hash before First
///   (`ChainStart::prev_hash`); each later row from the row before it,
///   whose id must be one less (a missing id is a break at that id);
/// - rows below First (exported, then pruned in the store) cannot be
///   checked against the store: the lowest one is taken on its own hash,
///   the others chain from it, and the one right before First must carry
///   the store's hash before First;
/// - a row without a hash, or with a hash that is not lower-case hex, is
///   a break; so is a second row for an id that differs from the first;
/// - rows above the cursor (delivered, acknowledgement not yet written)
///   are not walked: like the counts, the walk judges what the
///   destination must hold, and the walk ends at the first of them.
///
/// Only the first break is kept: after it, every hash would differ.
#[derive(Debug)]
pub struct ChainWalk {
    first: EntryId,
    cursor: EntryId,
    first_prev: ChainHash,
    /// The last row walked: its id and the hash it carries (checked).
    prev: Option<(EntryId, ChainHash)>,
    rows: u64,
    broken: Option<(EntryId, String)>,
}

impl ChainWalk {
    /// A walk from `start` through `cursor`; `None` for a ledger without
    /// a chain.
    pub fn new(start: &ChainStart, cursor: EntryId) -> Option<Self> {
        let first_prev = start.prev_hash?;
        Some(Self { first: start.first, cursor, first_prev, prev: None, rows: 0, broken: None })
    }

    /// Walks the next row (ids ascending). False once the chain broke, or
    /// past the cursor: the rows after need not be read.
    pub fn push(&mut self, row: ChainRow<'_>) -> bool {
        if self.broken.is_some() || row.id > self.cursor {
            return false;
        }
        self.rows += 1;
        if let Err((id, reason)) = self.step(row) {
            self.broken = Some((id, reason));
            return false;
        }
        true
    }

    /// A row at `id` whose fields could not be read (`why`): a break
    /// there, unless past the cursor. False, as `push` after a break.
    pub fn unreadable(&mut self, id: EntryId, why: &str) -> bool {
        if self.broken.is_none() && id <= self.cursor {
            self.rows += 1;
            self.broken = Some((id, format!("the row cannot be read as an entry: {why}")));
        }
        false
    }

    fn step(&mut self, row: ChainRow<'_>) -> Result<(), (EntryId, String)> {
        let id = row.id;
        let Some(text) = row.hash else {
            return Err((id, "the row has no hash, in a chained ledger".into()));
        };
        let Some(held) = chain::from_hex(text) else {
            let shown: String = text.chars().take(80).collect();
            return Err((id, format!("the row's hash {shown:?} is not 64 lower-case hex digits")));
        };
        let from = match self.prev {
            Some((prev_id, prev_hash)) if id == prev_id => {
                if held == prev_hash {
                    // A repeat of the row before (counted by the range
                    // check): nothing new to chain.
                    return Ok(());
                }
                return Err((id, "two rows hold this id with different hashes".into()));
            }
            Some((prev_id, _)) if id < prev_id => {
                return Err((id, format!("the row came after id {prev_id}: the rows are not in id order")));
            }
            Some((prev_id, _)) if id > prev_id + 1 => {
                return Err((prev_id + 1, format!("no row holds it (the next row held is id {id})")));
            }
            Some((prev_id, prev_hash)) => {
                if id == self.first && prev_hash != self.first_prev {
                    return Err((
                        prev_id,
                        "the row's hash is not the store's hash before First (first_prev_hash)".into(),
                    ));
                }
                Some(prev_hash)
            }
            None if id > self.first => {
                return Err((self.first, format!("no row holds it (the lowest row held is id {id})")));
            }
            None if id == self.first => Some(self.first_prev),
            // The lowest row, below First: taken on its own hash.
            None => None,
        };
        if let Some(from) = from {
            let computed = chain::link(&from, id, row.ts, row.key, row.payload);
            if computed != held {
                let before = if id == self.first { "the store's hash before First" } else { "the row before it" };
                return Err((
                    id,
                    format!(
                        "its hash {text} is not the one recomputed from its fields and {before} ({}): the row \
                         was changed, or written with another hash",
                        chain::to_hex(&computed)
                    ),
                ));
            }
        }
        self.prev = Some((id, held));
        Ok(())
    }

    /// What the walk found.
    pub fn finish(self) -> ChainCheck {
        match self.broken {
            Some((id, reason)) => ChainCheck::Broken { id, reason },
            None => ChainCheck::Intact { rows: self.rows },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name() -> LedgerName {
        LedgerName::parse("a").unwrap()
    }

    fn holding(in_range: u64, distinct: u64, below_first: u64, above_cursor: u64) -> Holding {
        Holding { in_range, distinct, below_first, above_cursor, min: None, max: None, chain: None }
    }

    /// The first `n` entries of ledger `a`'s chain (incarnation 1), each
    /// hashed as the store does: (id, ts, key, payload, hash hex).
    fn chained(n: u64) -> Vec<(u64, u64, Option<String>, String, String)> {
        let mut prev = chain::genesis("a", 1);
        (1..=n)
            .map(|id| {
                let key = (id % 2 == 0).then(|| format!("k{id}"));
                let payload = format!("{{\"n\":{id}}}");
                prev = chain::link(&prev, id, 1000 + id, key.as_deref(), payload.as_bytes());
                (id, 1000 + id, key, payload, chain::to_hex(&prev))
            })
            .collect()
    }

    fn hash_before(rows: &[(u64, u64, Option<String>, String, String)], first: u64) -> [u8; 32] {
        if first == 1 { chain::genesis("a", 1) } else { chain::from_hex(&rows[(first - 2) as usize].4).unwrap() }
    }

    fn walk(rows: &[(u64, u64, Option<String>, String, String)], first: u64, prev: [u8; 32]) -> ChainCheck {
        let mut w = ChainWalk::new(&ChainStart { first, prev_hash: Some(prev) }, u64::MAX).unwrap();
        for (id, ts, key, payload, hash) in rows {
            let row = ChainRow { id: *id, ts: *ts, key: key.as_deref(), payload: payload.as_bytes(), hash: Some(hash) };
            if !w.push(row) {
                break;
            }
        }
        w.finish()
    }

    fn broken_at(check: &ChainCheck) -> Option<u64> {
        match check {
            ChainCheck::Broken { id, .. } => Some(*id),
            _ => None,
        }
    }

    #[test]
    fn an_intact_chain_from_first_and_from_rows_below_it() {
        let rows = chained(10);
        assert_eq!(walk(&rows, 1, hash_before(&rows, 1)), ChainCheck::Intact { rows: 10 });
        // First moved to 5 (1..=4 pruned in the store, still held).
        assert_eq!(walk(&rows, 5, hash_before(&rows, 5)), ChainCheck::Intact { rows: 10 });
        // Only rows from First held (the exporter started after a prune).
        assert_eq!(walk(&rows[4..], 5, hash_before(&rows, 5)), ChainCheck::Intact { rows: 6 });
        // Rows below First only chain among themselves: the lowest is
        // taken on its own hash.
        assert_eq!(walk(&rows[2..], 5, hash_before(&rows, 5)), ChainCheck::Intact { rows: 8 });
        assert!(ChainWalk::new(&ChainStart::unchained(1), 10).is_none());
        let empty = ChainWalk::new(&ChainStart { first: 1, prev_hash: Some(chain::genesis("a", 1)) }, 0).unwrap();
        assert_eq!(empty.finish(), ChainCheck::Intact { rows: 0 });
    }

    #[test]
    fn rows_above_the_cursor_are_not_walked() {
        let rows = chained(10);
        let start = ChainStart { first: 1, prev_hash: Some(hash_before(&rows, 1)) };
        let mut w = ChainWalk::new(&start, 6).unwrap();
        for (id, ts, key, payload, hash) in &rows[..6] {
            let row = ChainRow { id: *id, ts: *ts, key: key.as_deref(), payload: payload.as_bytes(), hash: Some(hash) };
            assert!(w.push(row));
        }
        // A row by hand above the cursor, past a gap and without a hash:
        // information for the counts, no break.
        let stray = ChainRow { id: 99, ts: 1, key: None, payload: b"{}", hash: None };
        assert!(!w.push(stray));
        assert!(!w.unreadable(99, "not JSON"));
        assert_eq!(w.finish(), ChainCheck::Intact { rows: 6 });
        let mut unreadable = ChainWalk::new(&start, 6).unwrap();
        assert!(!unreadable.unreadable(1, "not JSON"));
        assert_eq!(broken_at(&unreadable.finish()), Some(1));
    }

    #[test]
    fn a_changed_field_breaks_at_its_row() {
        let rows = chained(10);
        let mut payload = rows.clone();
        payload[6].3 = "{\"n\":70}".into();
        assert_eq!(broken_at(&walk(&payload, 1, hash_before(&rows, 1))), Some(7));
        let mut ts = rows.clone();
        ts[0].1 += 1;
        assert_eq!(broken_at(&walk(&ts, 1, hash_before(&rows, 1))), Some(1));
        let mut key = rows.clone();
        key[3].2 = None;
        assert_eq!(broken_at(&walk(&key, 1, hash_before(&rows, 1))), Some(4));
        // A row rewritten with a hash that fits its new fields breaks the
        // row after it.
        let mut rehashed = rows.clone();
        let prev = chain::from_hex(&rows[5].4).unwrap();
        rehashed[6].3 = "{\"n\":70}".into();
        rehashed[6].4 = chain::to_hex(&chain::link(&prev, 7, rows[6].1, None, rehashed[6].3.as_bytes()));
        assert_eq!(broken_at(&walk(&rehashed, 1, hash_before(&rows, 1))), Some(8));
    }

    #[test]
    fn a_missing_row_breaks_at_its_id() {
        let rows = chained(10);
        let mut gap = rows.clone();
        gap.remove(3);
        let c = walk(&gap, 1, hash_before(&rows, 1));
        assert_eq!(broken_at(&c), Some(4), "{c:?}");
        // The row at First missing, nothing below it.
        assert_eq!(broken_at(&walk(&rows[5..], 5, hash_before(&rows, 5))), Some(5));
        // A gap below First, and between the rows below First and First.
        let mut below = rows.clone();
        below.remove(1);
        assert_eq!(broken_at(&walk(&below, 5, hash_before(&rows, 5))), Some(2));
        let mut before_first = rows.clone();
        before_first.remove(3);
        assert_eq!(broken_at(&walk(&before_first, 5, hash_before(&rows, 5))), Some(4));
    }

    #[test]
    fn the_first_boundary_is_the_stores_hash() {
        let rows = chained(10);
        // The row at First checks against the store's hash, not the row
        // held before it: another chain's hash before First breaks it.
        let other = chain::genesis("b", 1);
        assert_eq!(broken_at(&walk(&rows[4..], 5, other)), Some(5));
        // With the rows below held, the one right before First must carry
        // the store's hash.
        assert_eq!(broken_at(&walk(&rows, 5, other)), Some(4));
        assert_eq!(broken_at(&walk(&rows, 1, other)), Some(1));
    }

    #[test]
    fn rows_without_a_hash_or_out_of_order_or_repeated_differently_break() {
        let rows = chained(5);
        let start = ChainStart { first: 1, prev_hash: Some(hash_before(&rows, 1)) };
        let row = |i: usize, hash: Option<&'static str>| ChainRow {
            id: rows[i].0,
            ts: rows[i].1,
            key: rows[i].2.as_deref(),
            payload: rows[i].3.as_bytes(),
            hash,
        };
        let mut w = ChainWalk::new(&start, 5).unwrap();
        assert!(w.push(ChainRow { hash: Some(&rows[0].4), ..row(0, None) }));
        assert!(!w.push(row(1, None)));
        assert!(!w.push(ChainRow { hash: Some(&rows[2].4), ..row(2, None) }), "nothing after a break");
        assert_eq!(broken_at(&w.finish()), Some(2));
        let mut bad = ChainWalk::new(&start, 5).unwrap();
        assert!(!bad.push(row(0, Some("ABC"))));
        assert_eq!(broken_at(&bad.finish()), Some(1));
        let mut repeated = ChainWalk::new(&start, 5).unwrap();
        assert!(repeated.push(ChainRow { hash: Some(&rows[0].4), ..row(0, None) }));
        assert!(repeated.push(ChainRow { hash: Some(&rows[0].4), ..row(0, None) }), "an equal repeat");
        assert!(!repeated.push(ChainRow { hash: Some(&rows[1].4), ..row(0, None) }));
        assert_eq!(broken_at(&repeated.finish()), Some(1));
    }

    #[test]
    fn a_chain_break_is_a_fault_and_an_uncheckable_chain_a_note() {
        let broken = Holding {
            chain: Some(ChainCheck::Broken { id: 7, reason: "no row holds it".into() }),
            ..holding(10, 10, 0, 0)
        };
        let c = LedgerCheck::judge(name(), 1, 1, 10, broken);
        assert_eq!(c.faults, ["chain breaks at id 7: no row holds it"]);
        let unchecked =
            Holding { chain: Some(ChainCheck::Uncheckable { why: "jsonb".into() }), ..holding(10, 10, 0, 0) };
        let c = LedgerCheck::judge(name(), 1, 1, 10, unchecked);
        assert!(c.faults.is_empty());
        assert_eq!(c.notes, ["the hash chain cannot be checked: jsonb"]);
        let intact = Holding { chain: Some(ChainCheck::Intact { rows: 10 }), ..holding(10, 10, 0, 0) };
        assert!(LedgerCheck::judge(name(), 1, 1, 10, intact).faults.is_empty());
    }

    #[test]
    fn exactly_first_to_cursor_is_clean_and_outside_rows_are_notes() {
        let c = LedgerCheck::judge(name(), 1, 5, 10, holding(6, 6, 4, 2));
        assert!(c.faults.is_empty(), "{:?}", c.faults);
        assert_eq!(c.notes.len(), 2, "{:?}", c.notes);
        let empty = LedgerCheck::judge(name(), 1, 1, 0, holding(0, 0, 0, 0));
        assert!(empty.faults.is_empty() && empty.notes.is_empty());
    }

    #[test]
    fn a_gap_and_a_repeat_are_faults() {
        let gap = LedgerCheck::judge(name(), 1, 1, 10, holding(9, 9, 0, 0));
        assert_eq!(gap.faults, ["1 of ids 1..=10 missing (holds 9 of 10)"]);
        let repeat = LedgerCheck::judge(name(), 1, 1, 10, holding(11, 10, 0, 0));
        assert_eq!(repeat.faults, ["1 repeated rows among ids 1..=10"]);
        let both = LedgerCheck::judge(name(), 1, 1, 10, holding(10, 9, 0, 0));
        assert_eq!(both.faults.len(), 2);
        let overcount = LedgerCheck::judge(name(), 1, 1, 10, holding(11, 11, 0, 0));
        assert_eq!(overcount.faults.len(), 1);
    }

    #[test]
    fn a_sink_that_cannot_be_asked_is_no_fault_but_one_that_failed_is() {
        assert!(LedgerCheck::unknown(name(), 1, 1, 3, Ok(())).faults.is_empty());
        assert_eq!(LedgerCheck::unknown(name(), 1, 1, 3, Err("down".into())).faults.len(), 1);
    }
}
