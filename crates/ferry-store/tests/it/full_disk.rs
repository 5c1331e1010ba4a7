//! A full disk is not a lost disk (issue #12 item 12): on a real, small
//! tmpfs the store refuses what does not fit with `NoSpace`, stays ready,
//! keeps serving reads, and takes appends again by itself once space is
//! freed; every acknowledged entry is there after a restart. The test
//! mounts its own tmpfs, so it needs root (CI runs as root); without root
//! it fails, it does not skip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ferry_store::{StoreConfig, StoreError};

use crate::support::*;

/// A tmpfs of `size` mounted on a fresh temp dir, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs failed (this test needs root, as in CI): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Fills the filesystem with a ballast file until writing fails, then
/// frees `spare` bytes of it; returns it.
fn fill_up(dir: &Path, spare: u64) -> PathBuf {
    use std::io::Write as _;
    let path = dir.join("ballast");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 64 * 1024];
    while f.write_all(&block).is_ok() {}
    let len = f.metadata().unwrap().len();
    f.set_len(len.saturating_sub(spare)).unwrap();
    path
}

/// About 1 KiB of JSON that does not compress away, so packs take room.
fn payload(i: usize) -> String {
    let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let hex: String = (0..64)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("{:016x}", x)
        })
        .collect();
    format!(r#"{{"i":{i},"noise":"{}"}}"#, &hex[..1000])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_refuses_appends_without_poisoning_and_they_resume_when_space_returns() {
    let fs = Tmpfs::mount("24m");
    let data = fs.path().join("data");
    let mut c = StoreConfig::new(&data);
    c.chunk_entries = Some(64);
    c.wal_segment_bytes = 256 * 1024;
    let l = ledger("audit");
    let store = open_with(c.clone());
    let mut acked = Vec::new();
    for i in 0..64 {
        acked.extend(store.append(&l, vec![entry(&payload(i))]).await.unwrap().ids);
        assert_eq!(acked.len(), i + 1);
    }
    // Room for a few chunks' worth of WAL, so the freezer and the catalog
    // meet the full disk too.
    let ballast = fill_up(fs.path(), 400 * 1024);

    // Appends until the disk refuses one; each refusal is NoSpace, never a
    // poison, and the store stays ready and readable throughout.
    let mut refused = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while refused < 20 {
        assert!(Instant::now() < deadline, "the disk never filled");
        match store.append(&l, vec![entry(&payload(acked.len()))]).await {
            Ok(out) => acked.extend(out.ids),
            Err(StoreError::NoSpace(reason)) => {
                refused += 1;
                assert!(reason.contains("No space left"), "{reason}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("a full disk must refuse with NoSpace, got: {e}"),
        }
        assert!(store.ready().is_ok(), "a full disk must not poison the store: {:?}", store.ready());
    }
    // The freezer and the catalog met the full disk too (chunks filled);
    // still no poison, and every acked entry reads back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(store.ready().is_ok(), "{:?}", store.ready());
    match store.create_ledger_blocking(&ledger("during")) {
        Ok(_) | Err(StoreError::NoSpace(_)) => {}
        Err(e) => panic!("a catalog commit on a full disk must refuse with NoSpace, got: {e}"),
    }
    assert!(store.ready().is_ok(), "{:?}", store.ready());
    let read: Vec<u64> = read_all(&store, &l).iter().map(|e| e.id).collect();
    assert_eq!(read, acked, "reads are served while the disk is full");

    // Space returns: appends are taken again, by themselves.
    std::fs::remove_file(&ballast).unwrap();
    let resumed =
        store.append(&l, vec![entry(&payload(acked.len()))]).await.expect("appends resume when space returns");
    acked.extend(resumed.ids);
    for _ in 0..200 {
        acked.extend(store.append(&l, vec![entry(&payload(acked.len()))]).await.unwrap().ids);
    }
    assert!(store.create_ledger_blocking(&ledger("other")).unwrap(), "catalog commits work again");
    assert!(store.ready().is_ok());
    close(store).await;

    let store = open_with(c);
    let read: Vec<u64> = read_all(&store, &l).iter().map(|e| e.id).collect();
    assert_eq!(read, acked, "every acknowledged entry survives, with no gap");
    close(store).await;
}

/// redb answers every call with `PreviousIo` after one failed commit; a
/// commit refused for lack of space must not end the catalog there. It is
/// refused with `NoSpace`, changes nothing, the catalog reopens, serves
/// reads, and commits again once there is room.
#[test]
fn a_catalog_commit_refused_for_lack_of_space_leaves_a_working_catalog() {
    use ferry_core::LedgerName;
    use ferry_format::keys::CatalogKey;
    use ferry_store::{Catalog, CatalogOp, RedbCatalog};

    let fs = Tmpfs::mount("8m");
    let dir = fs.path().join("catalog");
    std::fs::create_dir(&dir).unwrap();
    let catalog = RedbCatalog::open(&dir).unwrap();
    let key = |i: usize| CatalogKey::Ledger(LedgerName::parse(&format!("l{i}")).unwrap());
    catalog.commit(&[CatalogOp::Put(key(0), b"before".to_vec())]).unwrap();
    let ballast = fill_up(fs.path(), 0);

    let big = vec![7u8; 256 * 1024];
    let mut refused = None;
    for i in 1..100 {
        match catalog.commit(&[CatalogOp::Put(key(i), big.clone())]) {
            Ok(()) => {}
            Err(StoreError::NoSpace(reason)) => {
                refused = Some(i);
                assert!(reason.contains("No space left"), "{reason}");
                break;
            }
            Err(e) => panic!("a full disk must refuse a catalog commit with NoSpace, got: {e}"),
        }
    }
    let refused = refused.expect("the disk never filled");
    assert_eq!(catalog.get(&key(0)).unwrap(), Some(b"before".to_vec()), "reads work after the refusal");
    assert_eq!(catalog.get(&key(refused)).unwrap(), None, "the refused commit changed nothing");

    std::fs::remove_file(&ballast).unwrap();
    catalog.commit(&[CatalogOp::Put(key(refused), b"after".to_vec())]).expect("commits work once there is room");
    drop(catalog);
    let catalog = RedbCatalog::open(&dir).unwrap();
    assert_eq!(catalog.get(&key(0)).unwrap(), Some(b"before".to_vec()));
    assert_eq!(catalog.get(&key(refused)).unwrap(), Some(b"after".to_vec()));
}
