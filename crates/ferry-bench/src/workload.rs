//! What one cell of the benchmark appends: how many clients, how large a
//! payload, how many entries per call, and over which ledgers.

use ferry_core::LedgerName;

/// One point of the grid, run against every target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell {
    pub clients: usize,
    /// Bytes of each entry's payload (its compact JSON text).
    pub payload_bytes: usize,
    /// Entries per append call (1 = single-entry mode).
    pub batch: usize,
}

/// Appends are spread over this many ledgers: client `w` writes to
/// ledger `w % LEDGERS`.
pub const LEDGERS: usize = 16;

/// The smallest payload `payload_json` can build (`{"d":""}`).
pub const PAYLOAD_BYTES_MIN: usize = 8;

/// The ledgers a run writes to.
pub fn ledger_names() -> Vec<LedgerName> {
    (0..LEDGERS).map(|i| LedgerName::parse(&format!("bench-{i:02}")).expect("a valid ledger name")).collect()
}

/// A compact JSON object of exactly `bytes` bytes: `{"d":"xxxx…"}`.
pub fn payload_json(bytes: usize) -> String {
    assert!(bytes >= PAYLOAD_BYTES_MIN, "payloads are at least {PAYLOAD_BYTES_MIN} bytes");
    format!(r#"{{"d":"{}"}}"#, "x".repeat(bytes - PAYLOAD_BYTES_MIN))
}

/// The HTTP body of one append call: `{"payload":…}` for a single entry,
/// `{"entries":[{"payload":…},…]}` for a batch.
pub fn http_body(cell: &Cell) -> Vec<u8> {
    let entry = format!(r#"{{"payload":{}}}"#, payload_json(cell.payload_bytes));
    if cell.batch == 1 {
        return entry.into_bytes();
    }
    let entries = vec![entry; cell.batch].join(",");
    format!(r#"{{"entries":[{entries}]}}"#).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_has_the_exact_size_and_is_json() {
        for size in [PAYLOAD_BYTES_MIN, 256, 1024] {
            let p = payload_json(size);
            assert_eq!(p.len(), size);
            serde_json::from_str::<serde_json::Value>(&p).unwrap();
        }
    }

    #[test]
    fn http_bodies_parse_with_the_right_entry_count() {
        let one = Cell { clients: 1, payload_bytes: 256, batch: 1 };
        let v: serde_json::Value = serde_json::from_slice(&http_body(&one)).unwrap();
        assert_eq!(v["payload"]["d"].as_str().unwrap().len(), 256 - PAYLOAD_BYTES_MIN);
        let batch = Cell { batch: 3, ..one };
        let v: serde_json::Value = serde_json::from_slice(&http_body(&batch)).unwrap();
        assert_eq!(v["entries"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn ledger_names_are_distinct() {
        let names = ledger_names();
        assert_eq!(names.len(), LEDGERS);
        assert_eq!(names.iter().collect::<std::collections::HashSet<_>>().len(), LEDGERS);
    }
}
