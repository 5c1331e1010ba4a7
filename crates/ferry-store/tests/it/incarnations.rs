//! A ledger's incarnation is durable and never reused for a name, and the
//! format policy: a format-1 data directory is migrated at start (its
//! ledgers get incarnations), a newer one is refused.

use ferry_format::keys::{CatalogKey, ConfigName, CounterName};
use ferry_store::verify::verify;
use ferry_store::{Catalog, CatalogOp, LedgerMeta, RedbCatalog, StoreError};

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_recreated_ledger_gets_a_new_incarnation_that_survives_restarts_and_is_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (ledger("a"), ledger("b"));
    let store = open(dir.path());
    store.append(&a, vec![entry("1")]).await.unwrap();
    store.append(&b, vec![entry("1")]).await.unwrap();
    let first_a = store.ledger_info(&a).unwrap().incarnation;
    let first_b = store.ledger_info(&b).unwrap().incarnation;
    assert_ne!(first_a, first_b);
    store.delete_ledger(&a).await.unwrap();
    store.append(&a, vec![entry("2")]).await.unwrap();
    let second_a = store.ledger_info(&a).unwrap().incarnation;
    assert!(second_a > first_a.max(first_b), "{second_a} after {first_a}, {first_b}");
    assert_eq!(store.ledger_head(&a).unwrap().incarnation, second_a);
    close(store).await;

    let store = open(dir.path());
    assert_eq!(store.ledger_info(&a).unwrap().incarnation, second_a, "durable across a restart");
    assert_eq!(store.ledger_info(&b).unwrap().incarnation, first_b);
    store.delete_ledger(&a).await.unwrap();
    store.create_ledger_blocking(&a).unwrap();
    let third_a = store.ledger_info(&a).unwrap().incarnation;
    assert!(third_a > second_a, "a restart does not hand out an old incarnation again");
    close(store).await;
    assert!(verify(&config(dir.path())).unwrap().is_ok());
}

/// Rewrites a data directory without packs into format 1: segment headers
/// say 1, `ledger:` values have no incarnation, there is no
/// `counter:incarnation`, and `config:format_version` is 1. (The committed
/// format fixtures prove the same on a directory written by a format-1
/// build, packs included.)
fn downgrade_to_format_1(dir: &std::path::Path) {
    for segment in segments(dir) {
        let mut bytes = std::fs::read(&segment).unwrap();
        bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
        std::fs::write(&segment, bytes).unwrap();
    }
    let catalog = RedbCatalog::open(&dir.join("catalog")).unwrap();
    let mut ops = vec![
        CatalogOp::Delete(CatalogKey::Counter(CounterName::Incarnation)),
        CatalogOp::Put(CatalogKey::Config(ConfigName::FormatVersion), b"1".to_vec()),
    ];
    for (key, value) in catalog.scan(CatalogKey::LEDGER_PREFIX).unwrap() {
        let mut json: serde_json::Value = serde_json::from_slice(&value).unwrap();
        json.as_object_mut().unwrap().remove("incarnation");
        // Format 1 had no hash chain either (format 5).
        json.as_object_mut().unwrap().remove("chain");
        ops.push(CatalogOp::Put(key, serde_json::to_vec(&json).unwrap()));
    }
    catalog.commit(&ops).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_format_1_data_dir_opens_and_its_ledgers_get_distinct_durable_incarnations() {
    let dir = tempfile::tempdir().unwrap();
    let names = [ledger("x"), ledger("y"), ledger("z")];
    let store = open(dir.path());
    for l in &names {
        store.append(l, (0..6).map(|i| entry(&i.to_string())).collect()).await.unwrap();
    }
    close(store).await;
    downgrade_to_format_1(dir.path());
    let report = verify(&config(dir.path())).unwrap();
    assert!(report.is_ok(), "a format-1 directory is healthy: {:?}", report.findings);
    let migrates = format!("migrates it to {}", ferry_core::limits::FORMAT_VERSION);
    assert!(report.findings.iter().any(|f| f.message.contains(&migrates)), "{:?}", report.findings);

    let store = open(dir.path());
    let incarnations: Vec<u64> = names.iter().map(|l| store.ledger_info(l).unwrap().incarnation).collect();
    assert!(incarnations.iter().all(|&n| n > 0));
    let mut distinct = incarnations.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), names.len(), "{incarnations:?}");
    for l in &names {
        let entries = read_all(&store, l);
        assert_eq!(entries.len(), 6, "every entry is still there after the migration");
    }
    store.create_ledger_blocking(&ledger("w")).unwrap();
    assert!(store.ledger_info(&ledger("w")).unwrap().incarnation > *incarnations.iter().max().unwrap());
    close(store).await;

    let report = verify(&config(dir.path())).unwrap();
    assert!(report.is_ok() && report.warnings() == 0, "{:?}", report.findings);
    let store = open(dir.path());
    let again: Vec<u64> = names.iter().map(|l| store.ledger_info(l).unwrap().incarnation).collect();
    assert_eq!(again, incarnations, "the migration ran once; the incarnations it gave are durable");
    close(store).await;
}

#[test]
fn a_data_dir_of_a_newer_format_is_refused_naming_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    let catalog = RedbCatalog::open(&dir.path().join("catalog")).unwrap();
    catalog.commit(&[CatalogOp::Put(CatalogKey::Config(ConfigName::FormatVersion), b"99".to_vec())]).unwrap();
    let before = catalog.scan("").unwrap();
    drop(catalog);
    match open_err(config(dir.path())) {
        e @ StoreError::UnknownFormat { found: 99, .. } => {
            let msg = e.to_string();
            assert!(msg.contains("format version 99") && msg.contains("newer ferry"), "{msg}");
        }
        other => panic!("expected UnknownFormat, got {other:?}"),
    }
    let after = RedbCatalog::open(&dir.path().join("catalog")).unwrap().scan("").unwrap();
    assert_eq!(before, after, "a refused open changes nothing");
}

#[test]
fn ledger_metadata_of_format_1_decodes_with_no_incarnation() {
    let key = CatalogKey::Ledger(ledger("a"));
    let meta = LedgerMeta::decode(&key, br#"{"created_at":5,"first":1,"wal_from":[1,16]}"#).unwrap();
    assert_eq!(meta.incarnation, 0);
    let err = LedgerMeta::decode(&key, br#"{"created_at":5,"first":1,"wal_from":[1,16],"x":1}"#).unwrap_err();
    assert!(err.to_string().contains("ledger:a"), "{err}");
}

#[test]
fn a_catalog_that_lost_its_format_version_is_refused_not_pinned_anew() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    let catalog = RedbCatalog::open(&dir.path().join("catalog")).unwrap();
    catalog.commit(&[CatalogOp::Delete(CatalogKey::Config(ConfigName::FormatVersion))]).unwrap();
    drop(catalog);
    match open_err(config(dir.path())) {
        StoreError::CatalogCorrupted(msg) => assert!(msg.contains("config:format_version"), "{msg}"),
        other => panic!("expected CatalogCorrupted, got {other:?}"),
    }
    let catalog = RedbCatalog::open(&dir.path().join("catalog")).unwrap();
    assert_eq!(catalog.get(&CatalogKey::Config(ConfigName::FormatVersion)).unwrap(), None, "nothing was written");
}

/// A format-1 build that crashed while creating a segment left a torn
/// format-1 header; the build after the migration must still see it as
/// torn (and rewrite it), not refuse to start.
#[tokio::test(flavor = "multi_thread")]
async fn a_torn_segment_header_from_before_the_migration_is_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let l = ledger("a");
    let store = open(dir.path());
    store.append(&l, vec![entry("1")]).await.unwrap();
    close(store).await;
    downgrade_to_format_1(dir.path());
    let torn = segment_path(dir.path(), 2);
    std::fs::write(&torn, &ferry_format::wal::encode_segment_header(1)[..10]).unwrap();
    let report = verify(&config(dir.path())).unwrap();
    assert!(report.is_ok(), "{:?}", report.findings);

    let store = open(dir.path());
    assert_eq!(read_all(&store, &l).len(), 1);
    store.append(&l, vec![entry("2")]).await.unwrap();
    close(store).await;
    let store = open(dir.path());
    assert_eq!(read_all(&store, &l).len(), 2);
    close(store).await;
}
