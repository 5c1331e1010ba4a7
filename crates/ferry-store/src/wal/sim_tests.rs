//! The WAL on the simulated disk: group writes with segment rolls, a crash
//! at every sync point in turn, then replay of the disk image a power loss
//! would leave (only what was synced) and of the image where every write
//! reached the disk. Every acknowledged record must come back, ids dense
//! from 1, and nothing must appear that was never written.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use ferry_format::wal::{WalRecord, encode_record};
use ferry_fs::sim::{CrashClock, SimFs};

use super::*;
use crate::disk::Disk;
use crate::health::Health;

const FORMAT: u32 = ferry_core::limits::FORMAT_VERSION;
/// Small segments, so the workload rolls several times.
const SEGMENT_BYTES: u64 = 400;

pub(in crate::wal) fn hot() -> &'static Path {
    Path::new("/data/hot")
}

pub(in crate::wal) fn disk_on(fs: &SimFs) -> Disk {
    Disk::new(Arc::new(fs.clone()), Arc::new(Health::default()))
}

/// What a `Faulty` segment gets wrong, once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::wal) enum Fault {
    /// The next write lands half and fails with ENOSPC.
    ShortWrite,
    /// The next sync fails with EIO; later ones work.
    SyncOnce,
}

/// A segment file that fails once in the chosen way, then behaves.
#[derive(Debug)]
pub(in crate::wal) struct Faulty {
    inner: Arc<dyn VfsSegment>,
    fault: Fault,
    armed: std::sync::atomic::AtomicBool,
}

impl Faulty {
    pub(in crate::wal) fn wrap(inner: Arc<dyn VfsSegment>, fault: Fault) -> Arc<dyn VfsSegment> {
        Arc::new(Self { inner, fault, armed: true.into() })
    }

    fn fires(&self, fault: Fault) -> bool {
        self.fault == fault && self.armed.swap(false, std::sync::atomic::Ordering::SeqCst)
    }
}

impl ferry_fs::vfs::VfsRead for Faulty {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
}

impl VfsSegment for Faulty {
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        if self.fires(Fault::ShortWrite) {
            self.inner.write_at(&buf[..buf.len() / 2], offset)?;
            return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
        }
        self.inner.write_at(buf, offset)
    }
    fn sync(&self) -> std::io::Result<()> {
        if self.fires(Fault::SyncOnce) {
            return Err(std::io::Error::from_raw_os_error(5)); // EIO
        }
        self.inner.sync()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
}

fn payload(id: u64) -> String {
    format!("{{\"n\":{id}}}")
}

/// One group of `count` records from `first`, as the flusher encodes it.
fn group(first: u64, count: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    for id in first..first + count {
        let payload = payload(id);
        let record = WalRecord {
            ledger: "audit",
            id,
            ts: id,
            key: None,
            idempotency_key: None,
            batch_continues: id + 1 < first + count,
            group_start: id == first,
            relocated: false,
            hash: None,
            payload: payload.as_bytes(),
        };
        encode_record(&record, &mut buf);
    }
    buf
}

/// Writes groups as the flusher does (rolling segments) until `groups` are
/// written or the disk fails; returns the last acknowledged id.
fn run_workload(disk: &Disk, groups: u64) -> u64 {
    let Ok(mut wal) = replay(disk, hot(), FORMAT, |_, _| Ok(())) else { return 0 };
    let mut acked = 0;
    for g in 0..groups {
        let buf = group(acked + 1, 1 + g % 3);
        if wal.writer.len > SEGMENT_HEADER_BYTES as u64 && wal.writer.len + buf.len() as u64 > SEGMENT_BYTES {
            match SegmentWriter::create(disk, hot(), wal.writer.seq + 1, FORMAT) {
                Ok(next) => wal.writer = next,
                Err(_) => return acked,
            }
        }
        if wal.writer.append_durably(disk, &buf).is_err() {
            return acked;
        }
        acked += 1 + g % 3;
    }
    acked
}

/// Replays a disk image; returns the records of complete batches by id.
fn replayed(fs: &SimFs) -> Result<BTreeMap<u64, Vec<u8>>> {
    let mut found = BTreeMap::new();
    replay(&disk_on(fs), hot(), FORMAT, |_, r| {
        assert_eq!(r.record.ledger, "audit");
        assert!(found.insert(r.record.id, r.record.payload.to_vec()).is_none(), "id {} twice", r.record.id);
        Ok(())
    })?;
    Ok(found)
}

fn check_image(fs: &SimFs, acked: u64, written_max: u64, what: &str) {
    let found = replayed(fs).unwrap_or_else(|e| panic!("{what}: replay failed: {e}"));
    let ids: Vec<u64> = found.keys().copied().collect();
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>(), "{what}: ids dense from 1");
    assert!(ids.len() as u64 >= acked, "{what}: {acked} acknowledged, {} recovered", ids.len());
    assert!(ids.len() as u64 <= written_max, "{what}: a record that was never written appeared");
    for (id, bytes) in &found {
        assert_eq!(bytes, payload(*id).as_bytes(), "{what}: payload of id {id}");
    }
}

#[test]
fn every_acknowledged_record_survives_a_crash_at_every_sync_point() {
    const GROUPS: u64 = 40;
    // How many sync points a whole run has.
    let clock = CrashClock::new();
    let fs = SimFs::new(&[hot()], clock.clone());
    let total = run_workload(&disk_on(&fs), GROUPS);
    let syncs = clock.syncs();
    assert!(syncs > GROUPS, "the run rolled segments: {syncs} syncs");
    check_image(&fs.crash_image(true), total, total, "no crash");

    for n in 1..=syncs {
        let clock = CrashClock::new();
        let fs = SimFs::new(&[hot()], clock.clone());
        clock.crash_at(n);
        let acked = run_workload(&disk_on(&fs), GROUPS);
        assert!(clock.crashed(), "sync point {n} was reached");
        // A crash can leave one more group written than acknowledged.
        let written_max = acked + 3;
        check_image(&fs.crash_image(true), acked, written_max, &format!("crash at sync {n}, synced image"));
        check_image(&fs.crash_image(false), acked, written_max, &format!("crash at sync {n}, live image"));
    }
}

#[test]
fn a_refused_write_is_cut_back_and_the_next_group_lands_where_it_would_have() {
    let fs = SimFs::new(&[hot()], CrashClock::new());
    let disk = disk_on(&fs);
    let mut wal = replay(&disk, hot(), FORMAT, |_, _| Ok(())).unwrap();
    wal.writer.append_durably(&disk, &group(1, 2)).unwrap();
    let len = wal.writer.len;
    // A write that reaches the file but fails (as a short write on a full
    // disk does) is cut back to the synced length, and the store goes on.
    let real = wal.writer.file.clone();
    wal.writer.file = Faulty::wrap(real.clone(), Fault::ShortWrite);
    let err = wal.writer.append_durably(&disk, &group(3, 2)).unwrap_err();
    assert!(!matches!(err, StoreError::Poisoned(_)), "{err}");
    assert!(disk_health_ok(&disk), "a refused write does not poison");
    assert_eq!((wal.writer.len, real.len().unwrap()), (len, len), "cut back to the synced length");
    wal.writer.file = real;
    wal.writer.append_durably(&disk, &group(3, 2)).unwrap();
    let found = replayed(&fs.crash_image(true)).unwrap();
    assert_eq!(found.keys().copied().collect::<Vec<_>>(), [1, 2, 3, 4]);
}

fn disk_health_ok(disk: &Disk) -> bool {
    disk.health().check().is_ok()
}

/// Issue #12 item 3: after `kill -9` between a group's write and its
/// fdatasync, the whole group sits in the page cache. Whatever replay then
/// serves must already be durable: a power loss after the restart must not
/// take back a record that was served (and exported, or answered to an
/// idempotent retry) with its id.
#[test]
fn what_replay_serves_survives_a_power_loss_after_the_restart() {
    let clock = CrashClock::new();
    let fs = SimFs::new(&[hot()], clock.clone());
    let disk = disk_on(&fs);
    let mut wal = replay(&disk, hot(), FORMAT, |_, _| Ok(())).unwrap();
    wal.writer.append_durably(&disk, &group(1, 2)).unwrap();
    clock.crash_at(1); // the next group's fdatasync
    assert!(wal.writer.append_durably(&disk, &group(3, 2)).is_err(), "killed before the sync");

    let restarted = fs.process_crash();
    let served = replayed(&restarted).unwrap();
    assert_eq!(served.keys().copied().collect::<Vec<_>>(), [1, 2, 3, 4], "the page cache holds the whole group");
    let after_power_loss = replayed(&restarted.crash_image(true)).unwrap();
    assert_eq!(after_power_loss, served, "replay served records that were not durable");
}

/// Issue #12 item 10: once a sync failed, no later write may reach the WAL
/// — not an append group, and not a relocation queued before the failure
/// (it would write over the failed group's bytes and sync them). The
/// checked disk refuses every write after a poison, whoever asks.
#[test]
fn after_a_failed_sync_no_write_reaches_the_wal() {
    let fs = SimFs::new(&[hot()], CrashClock::new());
    let disk = disk_on(&fs);
    let mut wal = replay(&disk, hot(), FORMAT, |_, _| Ok(())).unwrap();
    wal.writer.append_durably(&disk, &group(1, 1)).unwrap();
    let len = wal.writer.len;
    // A sync that fails once (a transient EIO), then works again.
    let real = wal.writer.file.clone();
    wal.writer.file = Faulty::wrap(real.clone(), Fault::SyncOnce);
    let failed = group(2, 1);
    assert!(matches!(wal.writer.append_durably(&disk, &failed), Err(StoreError::Poisoned(_))));
    let on_disk = real.len().unwrap();
    assert_eq!(on_disk, len + failed.len() as u64, "the failed group's bytes are in the file");

    // The relocation (or any group) that comes next is refused untouched.
    let err = wal.writer.append_durably(&disk, &group(2, 3)).unwrap_err();
    assert!(matches!(err, StoreError::Poisoned(_)), "{err}");
    assert_eq!(real.len().unwrap(), on_disk, "nothing was written after the poison");
    let mut bytes = vec![0; failed.len()];
    real.read_at(&mut bytes, len).unwrap();
    assert_eq!(bytes, failed, "the failed group's bytes are as they were");
}
