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
/// The largest `max_entry_bytes` a configuration may set.
pub const ENTRY_BYTES_MAX_LIMIT: u64 = 32 * 1024 * 1024;
/// The largest `max_body_bytes` a configuration may set.
pub const BODY_BYTES_MAX_LIMIT: u64 = 64 * 1024 * 1024;
/// One append request encodes to at most this many WAL bytes, whatever
/// path it came by (HTTP bodies are smaller still).
pub const APPEND_BYTES_MAX: usize = 64 * 1024 * 1024;
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
/// The smallest `chunk_entries`: smaller chunks would make pack files and
/// catalog keys outnumber entries.
pub const CHUNK_ENTRIES_MIN: u64 = 4;
/// The largest `chunk_entries`: a chunk must stay one manageable file.
pub const CHUNK_ENTRIES_MAX: u64 = 1 << 24;
/// The on-disk format version this build writes (pinned at first start;
/// see `docs/format.md`, "Format versions"). 2: `ledger:` values carry a
/// durable `incarnation`, handed out by `counter:incarnation`. 3: frozen
/// chunks' idempotency-key fingerprints in `keys:` under
/// `config:fingerprint_key`. 4: durable watch sessions (`watch:` and
/// `watchpos:` keys), so a bounded resume token survives a restart. 5:
/// the per-ledger hash chain (records may carry a hash; `ledger:` values
/// `chain` and `first_prev_hash`, `chunk:` values `last_hash`). 6:
/// snapshot pins (`pin:` keys), a retention hold until their deadline.
pub const FORMAT_VERSION: u32 = 6;
/// The oldest format version this build opens (migrating it at start).
pub const FORMAT_VERSION_OLDEST: u32 = 1;
const _: () = assert!(FORMAT_VERSION_OLDEST >= 1 && FORMAT_VERSION_OLDEST <= FORMAT_VERSION);
/// A WAL segment is closed and a new one started past this size.
pub const WAL_SEGMENT_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// The flusher stops taking requests into a group past this many bytes.
pub const GROUP_COMMIT_BYTES_MAX: usize = 32 * 1024 * 1024;
/// So one group write is at most this long: the bound on a torn tail.
pub const GROUP_WRITE_BYTES_MAX: usize = GROUP_COMMIT_BYTES_MAX + APPEND_BYTES_MAX;
/// Append requests waiting for the flusher; senders wait beyond this.
pub const APPEND_QUEUE_DEPTH: usize = 8_192;
/// Default for `[server] max_watchers`.
pub const WATCHERS_MAX_DEFAULT: usize = 1_024;
/// Watch sessions kept (streaming or idle, in memory and in the catalog):
/// past this, a new watch evicts the session idle the longest. Each costs a
/// catalog header plus one position per ledger it delivered entries of.
pub const WATCH_SESSIONS_MAX: usize = 4_096;
/// An idle watch session (no stream) is forgotten this long after its
/// last stream ended; its token then answers 410 `token_expired`.
pub const WATCH_SESSION_IDLE_MS: u64 = 24 * 60 * 60 * 1000;
/// Watch positions are written to the catalog at most this often, in one
/// commit for every session that moved.
pub const WATCH_FLUSH_INTERVAL_MS: u64 = 1_000;
/// Runs of consecutive events of one ledger a session remembers, so that
/// a reconnect with any of the tokens sent within them resumes exactly;
/// about 80 bytes each.
pub const WATCH_JOURNAL_RUNS_MAX: usize = 4_096;
/// Resume points (reconnects) a session remembers, so that a token from an
/// abandoned branch is told from a current one.
pub const WATCH_BRANCHES_MAX: usize = 16;
/// Idle sessions kept in memory, where their journal lets a reconnect
/// resume exactly from any recent token; beyond this many, or after
/// `WATCH_IDLE_IN_MEMORY_MS`, an idle session lives on in the catalog only
/// (resumable from the last event it sent).
pub const WATCH_IDLE_SESSIONS_IN_MEMORY: usize = 256;
/// How long an idle session stays in memory at most.
pub const WATCH_IDLE_IN_MEMORY_MS: u64 = 60_000;
/// Expired sessions one flush forgets at most (each takes its positions,
/// up to one per ledger, with it).
pub const WATCH_FORGETS_PER_FLUSH: usize = 8;
/// Positions the periodic flush writes in one catalog commit at most (a
/// session is always written whole; others wait for the next flush).
pub const WATCH_FLUSH_POSITIONS_MAX: usize = 100_000;
/// A resume token (`{session:016x}.{epoch}.{seq}`) is at most this long.
pub const WATCH_TOKEN_BYTES_MAX: usize = 16 + 1 + 20 + 1 + 20;
/// Default for `[server] max_pins`.
pub const PINS_MAX_DEFAULT: usize = 4;

/// Connections served at once (`server.max_connections`) when the
/// open-file limit allows it; see `ferry_fs::descriptors::for_connections`.
pub const CONNECTIONS_MAX_DEFAULT: usize = 4_096;
/// Time a connection has to send a request head, from when it is ready for
/// one (`server.header_read_timeout`): a slow link sends a few KiB of
/// headers in well under a second; a kept-alive client idle longer than
/// this reconnects.
pub const HEADER_READ_TIMEOUT_DEFAULT: std::time::Duration = std::time::Duration::from_secs(15);
/// Time a connection may move no byte either way (`server.idle_timeout`).
/// Above the watch's 15 s keep-alive, so an idle watch stays open.
pub const IDLE_TIMEOUT_DEFAULT: std::time::Duration = std::time::Duration::from_secs(60);
/// The longest `wait` of a long-poll read (`GET …/entries?wait=`). A
/// wait is also cut to a second below `server.idle_timeout`, so the answer
/// comes before the connection would be closed for moving no byte.
pub const LONG_POLL_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(60);
/// Bytes of request bodies buffered at once (`server.max_buffered_body_bytes`):
/// eight bodies of the default `max_body_bytes`, or thousands of small ones.
pub const BUFFERED_BODY_BYTES_MAX_DEFAULT: u64 = 128 * 1024 * 1024;
/// Default `batch.max_entries` of an exporter.
pub const EXPORT_BATCH_ENTRIES_DEFAULT: usize = 1_000;
/// The largest `batch.max_entries`: one batch is one store read.
pub const EXPORT_BATCH_ENTRIES_MAX: usize = READ_LIMIT_MAX;
/// Default `batch.max_bytes` of an exporter.
pub const EXPORT_BATCH_BYTES_DEFAULT: u64 = 4 * 1024 * 1024;
/// The largest `batch.max_bytes` (one read stops at `READ_BYTES_MAX` anyway).
pub const EXPORT_BATCH_BYTES_MAX: u64 = READ_BYTES_MAX as u64;
/// Default `batch.linger`.
pub const EXPORT_LINGER_MS_DEFAULT: u64 = 50;
/// The longest `batch.linger`.
pub const EXPORT_LINGER_MS_MAX: u64 = 60_000;
/// Default `retry.initial` and `retry.max`.
pub const RETRY_INITIAL_MS_DEFAULT: u64 = 100;
pub const RETRY_MAX_MS_DEFAULT: u64 = 30_000;
/// The longest backoff, configured or asked for by a sink's Retry-After.
pub const RETRY_WAIT_MS_MAX: u64 = 60 * 60 * 1000;
/// Default and largest `max_parallel_ledgers`.
pub const EXPORT_PARALLEL_LEDGERS_DEFAULT: usize = 8;
pub const EXPORT_PARALLEL_LEDGERS_MAX: usize = 1_024;
/// Configured exporters at most.
pub const EXPORTERS_MAX: usize = 64;
/// Append notifications an exporter buffers before it resynchronises from
/// the ledgers' heads (which costs no storage read).
pub const EXPORT_WAKEUPS_BUFFER: usize = 4_096;
/// Control requests (status, pause, reset) queued per exporter.
pub const EXPORT_CONTROL_QUEUE_DEPTH: usize = 64;

const _: () = assert!(EXPORT_BATCH_ENTRIES_DEFAULT <= EXPORT_BATCH_ENTRIES_MAX);
const _: () = assert!(EXPORT_BATCH_BYTES_DEFAULT <= EXPORT_BATCH_BYTES_MAX);
const _: () = assert!(RETRY_INITIAL_MS_DEFAULT <= RETRY_MAX_MS_DEFAULT && RETRY_MAX_MS_DEFAULT <= RETRY_WAIT_MS_MAX);
const _: () = assert!(EXPORT_PARALLEL_LEDGERS_DEFAULT <= EXPORT_PARALLEL_LEDGERS_MAX);
const _: () = assert!(ENTRY_BYTES_MAX_DEFAULT <= BODY_BYTES_MAX_DEFAULT);
const _: () = assert!(BODY_BYTES_MAX_DEFAULT <= BUFFERED_BODY_BYTES_MAX_DEFAULT);
const _: () = assert!(ENTRY_BYTES_MAX_DEFAULT <= ENTRY_BYTES_MAX_LIMIT);
const _: () = assert!(ENTRY_BYTES_MAX_LIMIT <= BODY_BYTES_MAX_LIMIT);
const _: () = assert!(BODY_BYTES_MAX_LIMIT as usize <= APPEND_BYTES_MAX);
const _: () = assert!(CHUNK_ENTRIES_MIN <= CHUNK_ENTRIES_DEFAULT && CHUNK_ENTRIES_DEFAULT <= CHUNK_ENTRIES_MAX);
const _: () = assert!(READ_LIMIT_DEFAULT <= READ_LIMIT_MAX);
// SPEC §4: a watch event's `id:` is bounded whatever the number of ledgers.
const _: () = assert!(WATCH_TOKEN_BYTES_MAX <= 512);
const _: () = assert!(WATCH_IDLE_SESSIONS_IN_MEMORY <= WATCH_SESSIONS_MAX);
// A WAL record's ledger length is a u8 and its key lengths are u16.
const _: () = assert!(LEDGER_NAME_BYTES_MAX <= u8::MAX as usize);
const _: () = assert!(ENTRY_KEY_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(IDEMPOTENCY_KEY_BYTES_MAX <= u16::MAX as usize);
// Record offsets inside a segment are stored as u32.
const _: () = assert!(WAL_SEGMENT_BYTES_MAX + GROUP_WRITE_BYTES_MAX as u64 <= u32::MAX as u64);
/// Items in one page of a listing (`GET /v1/ledgers`, an exporter's
/// ledgers) when the request names no `limit`.
pub const PAGE_LIMIT_DEFAULT: usize = 1_000;
/// The largest `limit` a listing takes.
pub const PAGE_LIMIT_MAX: usize = 10_000;
/// Stuck ledgers `GET /v1/health` names per exporter, oldest first (all
/// are counted).
pub const HEALTH_STUCK_SHOWN: usize = 100;
/// Timestamps an exporter keeps per ledger behind its cursor to tell the
/// age of the oldest unexported entry without a read (`ferry-export`'s
/// `age.rs`): past this they are thinned, and the age errs old, never young.
pub const EXPORT_AGE_MARKS_MAX: usize = 32;
/// Ledgers with their own series on `/metrics` (`[server] metrics_ledgers`)
/// at most: each adds a handful of series per exporter, and a scrape
/// must stay small whatever the globs match. Past it the rest are left
/// out, and the server logs it once.
pub const METRICS_LEDGERS_MAX: usize = 1_000;
/// Requests one HTTP/2 connection may have open at once (each still
/// reserves its body from the server's body budget).
pub const H2_STREAMS_MAX: u32 = 128;
/// The largest header block an HTTP/2 request may send.
pub const H2_HEADER_LIST_BYTES_MAX: u32 = 64 * 1024;
/// Streams a client may open and reset before the server answers them (the
/// "rapid reset" flood); past it the connection is closed.
pub const H2_PENDING_RESETS_MAX: usize = 20;
