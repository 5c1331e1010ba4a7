//! Server CPU per acknowledged call, for the targets whose server is a
//! process of its own (a `ferry serve` child, nats-server, PostgreSQL).
//!
//! A server's CPU is read from `/proc/PID/stat` (utime + stime, every
//! thread of the process) before and after the measured run. A server of
//! several processes (PostgreSQL: the postmaster forks a backend per
//! connection plus its background workers) is its root and the root's
//! children: the root's own time plus what it reaped from children that
//! exited (cutime + cstime), plus each live child's time. A backend that
//! exits inside the window moves from "live child" to the root's reaped
//! time with all its CPU, so the difference still counts exactly what was
//! spent between the two readings. Clients run elsewhere and are never
//! counted: the number is the server's work per call.

use std::future::Future;
use std::time::Duration;

use serde::Serialize;

use crate::driver::Measurement;

/// CPU a server spent over some runs, and the calls acknowledged then.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ServerCpu {
    /// utime + stime between the readings, in microseconds.
    pub cpu_us: f64,
    /// Every call acknowledged between the readings (warm-up included
    /// when the readings span it).
    pub calls: u64,
}

impl ServerCpu {
    pub fn add(&mut self, other: ServerCpu) {
        self.cpu_us += other.cpu_us;
        self.calls += other.calls;
    }

    /// Microseconds of server CPU per acknowledged call.
    pub fn per_call_us(&self) -> Option<f64> {
        (self.calls > 0).then(|| self.cpu_us / self.calls as f64)
    }
}

/// A reading taken before a run; `finish` takes the second one.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    root: u32,
    spent: Duration,
}

impl Reading {
    /// The CPU the process tree under `root` has spent so far.
    pub fn take(root: u32) -> anyhow::Result<Reading> {
        Ok(Reading { root, spent: tree_cpu(root)? })
    }

    /// The CPU spent since this reading, over `calls` acknowledged calls.
    pub fn finish(self, calls: u64) -> anyhow::Result<ServerCpu> {
        let now = tree_cpu(self.root)?;
        let spent = now.saturating_sub(self.spent);
        Ok(ServerCpu { cpu_us: spent.as_secs_f64() * 1e6, calls })
    }
}

/// Runs `run` between two readings of the CPU of `root`'s process tree
/// and records it on the measurement, over every call acknowledged in the
/// run; with no `root` (an in-process or remote server) it just runs.
pub async fn around(
    root: Option<u32>,
    run: impl Future<Output = anyhow::Result<Measurement>>,
) -> anyhow::Result<Measurement> {
    let Some(root) = root else { return run.await };
    let before = Reading::take(root)?;
    let mut measured = run.await?;
    measured.server_cpu = Some(before.finish(measured.acked)?);
    Ok(measured)
}

/// The fields of `/proc/PID/stat` this module reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    ppid: u32,
    /// utime + stime, in clock ticks.
    own: u64,
    /// cutime + cstime (children waited for), in clock ticks.
    reaped: u64,
}

/// Parses one `/proc/PID/stat` line. The command name (field 2) is in
/// parentheses and may hold spaces and parentheses itself, so the fields
/// are counted from the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    // After the name: state(3) ppid(4) … utime(14) stime(15) cutime(16) cstime(17).
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat { ppid: u32::try_from(field(4)?).ok()?, own: field(14)? + field(15)?, reaped: field(16)? + field(17)? })
}

fn read_stat(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The CPU spent by `root` (with what it reaped) and its live children.
fn tree_cpu(root: u32) -> anyhow::Result<Duration> {
    let Some(stat) = read_stat(root) else {
        anyhow::bail!("cannot read /proc/{root}/stat: is the server a process on this machine?");
    };
    let mut ticks = stat.own + stat.reaped;
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        // A child that exited since the listing is gone: its time is in
        // the root's reaped time by the next reading.
        if let Some(child) = read_stat(pid).filter(|s| s.ppid == root) {
            ticks += child.own;
        }
    }
    Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks_per_second()))
}

/// `/proc`'s clock tick (`getconf CLK_TCK`; 100 on every common Linux).
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// The parent of `pid` (from `/proc/PID/stat`), if it is on this machine.
pub fn parent_of(pid: u32) -> Option<u32> {
    read_stat(pid).map(|s| s.ppid)
}

/// The command name of `pid` (`/proc/PID/comm`).
pub fn command_of(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|s| s.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_whatever_the_command_name() {
        let line = "4242 (post (gres) x) S 17 4242 4242 0 -1 4194560 100 0 0 0 250 31 7 2 20 0 1 0 100 0 0";
        assert_eq!(parse_stat(line), Some(Stat { ppid: 17, own: 281, reaped: 9 }));
        assert_eq!(parse_stat("4242 (x) S 17"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_spends_cpu_and_a_missing_one_is_an_error() {
        let me = std::process::id();
        let before = Reading::take(me).unwrap();
        // Burn CPU until the reading moves (the clock tick is 10 ms).
        let mut x = 0u64;
        let cpu = loop {
            for _ in 0..1_000_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            let cpu = before.finish(10).unwrap();
            if cpu.cpu_us > 0.0 {
                break cpu;
            }
        };
        assert_eq!(cpu.calls, 10);
        assert!(Reading::take(u32::MAX).is_err());
    }

    #[test]
    fn per_call_needs_calls_and_adds_up() {
        let mut a = ServerCpu { cpu_us: 100.0, calls: 10 };
        assert_eq!(a.per_call_us(), Some(10.0));
        a.add(ServerCpu { cpu_us: 200.0, calls: 10 });
        assert_eq!(a.per_call_us(), Some(15.0));
        assert_eq!(ServerCpu::default().per_call_us(), None);
    }
}
