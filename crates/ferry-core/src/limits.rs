//! Every limit ferry enforces, in one place, with the relations between them
//! checked at compile time. Units come last in names.

/// Ledger names are at most this long (SPEC §1).
pub const LEDGER_NAME_BYTES_MAX: usize = 63;
/// An entry's routing `key` is at most this long (SPEC §1).
pub const ENTRY_KEY_BYTES_MAX: usize = 256;
/// An append's `idempotency_key` is at most this long.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 256;
/// Idempotency keys are remembered at least this long per ledger (SPEC §4).
pub const IDEMPOTENCY_WINDOW_MS: u64 = 24 * 60 * 60 * 1000;
/// Default for `[storage] max_entry_bytes`: a payload's compact JSON size.
pub const ENTRY_BYTES_MAX_DEFAULT: u64 = 1024 * 1024;
/// Default for `[server] max_body_bytes`.
pub const BODY_BYTES_MAX_DEFAULT: u64 = 16 * 1024 * 1024;
/// Entries in one append request (`{"entries":[…]}`).
pub const BATCH_ENTRIES_MAX: usize = 10_000;
/// `limit` of one read request (SPEC §4).
pub const READ_LIMIT_MAX: usize = 10_000;
/// One read page stops after the entry that crosses this many bytes (a page
/// always holds at least one entry), so a page of 10,000 large entries
/// cannot exhaust memory; `next` says where to continue.
pub const READ_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Default `limit` of a read request.
pub const READ_LIMIT_DEFAULT: usize = 1_000;
/// Default for `[storage] chunk_entries` (pinned at first start).
pub const CHUNK_ENTRIES_DEFAULT: u64 = 65_536;
/// The on-disk format version (pinned at first start).
pub const FORMAT_VERSION: u32 = 1;
/// A WAL segment is closed and a new one started past this size.
pub const WAL_SEGMENT_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// One group commit writes at most this many bytes before its fsync.
pub const GROUP_COMMIT_BYTES_MAX: usize = 32 * 1024 * 1024;
/// Append requests waiting for the flusher; senders wait beyond this.
pub const APPEND_QUEUE_DEPTH: usize = 8_192;
/// Default for `[server] max_watchers`.
pub const WATCHERS_MAX_DEFAULT: usize = 1_024;
/// Default for `[server] max_pins`.
pub const PINS_MAX_DEFAULT: usize = 4;

const _: () = assert!(ENTRY_BYTES_MAX_DEFAULT <= BODY_BYTES_MAX_DEFAULT);
const _: () = assert!(READ_LIMIT_DEFAULT <= READ_LIMIT_MAX);
// A WAL record's ledger length is a u8 and its key lengths are u16.
const _: () = assert!(LEDGER_NAME_BYTES_MAX <= u8::MAX as usize);
const _: () = assert!(ENTRY_KEY_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(IDEMPOTENCY_KEY_BYTES_MAX <= u16::MAX as usize);
// A whole request body always fits in one group commit.
const _: () = assert!(BODY_BYTES_MAX_DEFAULT as usize <= GROUP_COMMIT_BYTES_MAX);
// Record offsets inside a segment are stored as u32.
const _: () = assert!(WAL_SEGMENT_BYTES_MAX + GROUP_COMMIT_BYTES_MAX as u64 <= u32::MAX as u64);
