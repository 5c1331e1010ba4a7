//! The range check (`ferry exporters check`, `GET /v1/exporters/{name}/check`):
//! does the destination hold exactly ids `First..=cursor` of each ledger?
//! The sink counts (`Sink::check`); this module judges, the same way for
//! every sink. Pure, unit-tested.
//!
//! A gap or a repeat inside `First..=cursor` is a fault. Ids below First
//! (exported, then pruned by retention) and above the cursor (delivered,
//! acknowledgement not yet written) are information.

use ferry_core::{EntryId, LedgerName};
use serde::{Deserialize, Serialize};

use crate::sink::Holding;

/// The check of one exporter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    pub exporter: LedgerName,
    pub sink: String,
    /// True when no ledger has a fault (a sink that cannot be asked has
    /// none, and says so in `notes`).
    pub ok: bool,
    pub ledgers: Vec<LedgerCheck>,
}

/// The check of one ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerCheck {
    pub ledger: LedgerName,
    pub incarnation: u64,
    /// The ledger's First and the exporter's cursor: the destination should
    /// hold exactly `first..=cursor` (nothing when `cursor < first`).
    pub first: EntryId,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn name() -> LedgerName {
        LedgerName::parse("a").unwrap()
    }

    fn holding(in_range: u64, distinct: u64, below_first: u64, above_cursor: u64) -> Holding {
        Holding { in_range, distinct, below_first, above_cursor, min: None, max: None }
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
