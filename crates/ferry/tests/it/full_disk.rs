//! A full disk over the real binary (issue #12 item 12): `ferry serve` on a
//! small tmpfs answers appends that do not fit with 507
//! `insufficient_storage`, stays ready and readable, and takes appends
//! again by itself once space is freed. The test mounts its own tmpfs, so
//! it needs root (CI runs as root); without root it fails, never skips.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::Server;

/// A tmpfs of `size` mounted on a fresh temp dir, unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("create a temp dir");
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
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

/// Fills the filesystem with a ballast file until writing fails, then
/// frees `spare` bytes of it.
fn fill_up(dir: &Path, spare: u64) -> PathBuf {
    use std::io::Write as _;
    let path = dir.join("ballast");
    let mut f = std::fs::File::create(&path).expect("create the ballast");
    let block = vec![0u8; 64 * 1024];
    while f.write_all(&block).is_ok() {}
    let len = f.metadata().expect("ballast length").len();
    f.set_len(len.saturating_sub(spare)).expect("free some of the ballast");
    path
}

#[tokio::test]
async fn a_full_disk_answers_507_stays_ready_and_takes_appends_again_once_space_is_freed() {
    let fs = Tmpfs::mount("32m");
    let data = fs.0.path().join("data");
    let config = fs.0.path().join("ferry.toml");
    std::fs::write(&config, "[storage]\nchunk_entries = 64\n").expect("write the config");
    let server = Server::start(&data, Some(&config)).await;
    let body = |i: u64| format!(r#"{{"payload":{{"i":{i},"pad":"{:0>900}"}}}}"#, i * 7919);
    let mut acked = 0;
    for i in 1..=10 {
        assert_eq!(server.append("audit", body(i)).await.ids(), [i]);
        acked = i;
    }
    let ballast = fill_up(fs.0.path(), 200 * 1024);

    let deadline = Instant::now() + Duration::from_secs(60);
    let refusal = loop {
        assert!(Instant::now() < deadline, "the disk never filled");
        let r = server.append("audit", body(acked + 1)).await;
        match r.status {
            201 => acked = r.ids()[0],
            507 => break r,
            _ => panic!("a full disk must answer 507, got {} {}{}", r.status, r.text, r.server_log),
        }
    };
    refusal.assert_error(507, "insufficient_storage");
    assert_eq!(server.get("/readyz").await.status, 200, "a full disk does not make the server unready");
    assert_eq!(server.read_all("audit").await.len() as u64, acked, "reads are served");

    std::fs::remove_file(&ballast).expect("free the space");
    let r = server.append("audit", body(acked + 1)).await;
    assert_eq!(r.status, 201, "appends are taken again once space is freed: {}{}", r.text, r.server_log);
    assert_eq!(r.ids(), [acked + 1]);
    server.stop();
}
