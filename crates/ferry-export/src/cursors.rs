//! The exporters' cursors: `commit`, the one writer of cursors to the
//! catalog, and `CursorTable`, the cursors as retention sees them (a
//! `RetentionHold` that keeps every entry some exporter, configured or
//! orphaned, has not yet had acknowledged). The table is updated by the
//! runtime after each durable cursor write, so it never runs ahead of the
//! catalog.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;

use ferry_core::{EntryId, LedgerName};
use ferry_store::{CursorUpdate, RetentionHold, Store, StoreError};

use crate::settings::LedgerMatcher;

/// Writes exporter cursors durably, all in one catalog commit or none.
///
/// **Architecture Invariant:** this is the one writer of exporter cursors:
/// nothing else in ferry-export calls `Store::commit_cursors`. It may be
/// called only
/// - by a job, after the sink's acknowledgement, with `through` and never
///   past it; after a failed batch was appended to the dead-letter ledger,
///   with that batch's last id; or after retention pruned entries before
///   they were exported, with the id before the ledger's First (each of
///   these clears `sent_to`); before it sends a batch the head cut
///   short, with the cursor unchanged and `sent_to` the batch's last id;
///   and after the sink's `prepare` reported the destination's own
///   position, with that id (at most the head; `sent_to` kept only while
///   it is past that id);
/// - by `Exporters::start`, for the starting cursors of `start = "latest"`
///   exporters on ledgers they have none for;
/// - by the control actions: a reset (with the exporter's jobs stopped) and
///   the deletion of an orphaned exporter's cursors.
///
/// Not cancellable: the commit runs to its end on the blocking pool even if
/// the caller stops waiting, since a write the sink's acknowledgement
/// earned is always worth finishing.
pub(crate) async fn commit(store: &Store, updates: Vec<CursorUpdate>) -> Result<(), StoreError> {
    store.commit_cursors(updates).await
}

#[derive(Debug, Default)]
struct Table {
    /// False until the catalog's cursors are loaded: until then every
    /// ledger is held whole.
    loaded: bool,
    exporters: BTreeMap<LedgerName, Held>,
    /// Cursors of exporters no longer configured, kept until deleted.
    orphans: BTreeMap<LedgerName, BTreeMap<LedgerName, EntryId>>,
}

#[derive(Debug)]
struct Held {
    matcher: LedgerMatcher,
    cursors: HashMap<LedgerName, EntryId>,
}

/// Every exporter's cursors, shared by the runtime (writer) and retention
/// (reader).
#[derive(Debug, Default)]
pub struct CursorTable {
    table: RwLock<Table>,
}

impl CursorTable {
    /// A table for the configured exporters, holding everything until
    /// `load` is called.
    pub fn new<'a>(exporters: impl IntoIterator<Item = (&'a LedgerName, &'a LedgerMatcher)>) -> Self {
        let exporters = exporters
            .into_iter()
            .map(|(name, matcher)| (name.clone(), Held { matcher: matcher.clone(), cursors: HashMap::new() }))
            .collect();
        Self { table: RwLock::new(Table { loaded: false, exporters, orphans: BTreeMap::new() }) }
    }

    /// Installs the catalog's cursors; those of unknown exporters become
    /// orphans.
    pub fn load(&self, cursors: impl IntoIterator<Item = (LedgerName, LedgerName, EntryId)>) {
        let mut t = self.table.write().expect("cursor table lock");
        for (exporter, ledger, id) in cursors {
            match t.exporters.get_mut(&exporter) {
                Some(held) => {
                    held.cursors.insert(ledger, id);
                }
                None => {
                    t.orphans.entry(exporter).or_default().insert(ledger, id);
                }
            }
        }
        t.loaded = true;
    }

    pub fn get(&self, exporter: &LedgerName, ledger: &LedgerName) -> Option<EntryId> {
        let t = self.table.read().expect("cursor table lock");
        t.exporters.get(exporter)?.cursors.get(ledger).copied()
    }

    /// Records a cursor that is durable in the catalog (or, for a ledger
    /// the exporter has just started tracking, the position it starts at).
    pub fn set(&self, exporter: &LedgerName, ledger: &LedgerName, id: EntryId) {
        let mut t = self.table.write().expect("cursor table lock");
        if let Some(held) = t.exporters.get_mut(exporter) {
            held.cursors.insert(ledger.clone(), id);
        }
    }

    /// Forgets a deleted ledger everywhere.
    pub fn forget_ledger(&self, ledger: &LedgerName) {
        let mut t = self.table.write().expect("cursor table lock");
        for held in t.exporters.values_mut() {
            held.cursors.remove(ledger);
        }
        for cursors in t.orphans.values_mut() {
            cursors.remove(ledger);
        }
        t.orphans.retain(|_, c| !c.is_empty());
    }

    pub fn orphans(&self) -> BTreeMap<LedgerName, BTreeMap<LedgerName, EntryId>> {
        self.table.read().expect("cursor table lock").orphans.clone()
    }

    /// Drops an orphaned exporter's cursors (after they left the catalog).
    pub fn forget_orphan(&self, exporter: &LedgerName) {
        self.table.write().expect("cursor table lock").orphans.remove(exporter);
    }
}

impl RetentionHold for CursorTable {
    fn needs_from(&self, ledger: &LedgerName) -> Option<EntryId> {
        let t = self.table.read().expect("cursor table lock");
        if !t.loaded {
            return Some(1);
        }
        let configured = t.exporters.values().filter_map(|held| match held.cursors.get(ledger) {
            Some(c) => Some(c + 1),
            // Not tracked yet (a ledger this instant created): all of it.
            None => held.matcher.matches(ledger).then_some(1),
        });
        let orphaned = t.orphans.values().filter_map(|c| c.get(ledger).map(|c| c + 1));
        configured.chain(orphaned).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::ExporterConfig;

    fn name(s: &str) -> LedgerName {
        LedgerName::parse(s).unwrap()
    }

    #[test]
    fn holds_everything_until_loaded_then_from_the_lowest_cursor() {
        let a = ExporterConfig::from_flag(r#"a=stdout:{"ledgers":["audit*"]}"#).unwrap().validate().unwrap();
        let b = ExporterConfig::from_flag("b=stdout").unwrap().validate().unwrap();
        let table = CursorTable::new([(&a.name, &a.matcher), (&b.name, &b.matcher)]);
        assert_eq!(table.needs_from(&name("other")), Some(1));
        table.load([(name("a"), name("audit"), 40), (name("b"), name("audit"), 7), (name("gone"), name("x"), 3)]);
        assert_eq!(table.needs_from(&name("audit")), Some(8));
        table.set(&name("b"), &name("audit"), 50);
        assert_eq!(table.needs_from(&name("audit")), Some(41));
        assert_eq!(table.needs_from(&name("x")), Some(1), "b matches x and has no cursor yet");
        assert_eq!(table.orphans()[&name("gone")][&name("x")], 3);
        table.forget_ledger(&name("x"));
        assert!(table.orphans().is_empty());
    }
}
