//! The sink's SQL. Table and schema names are strict identifiers (checked
//! by `config.rs`: lower-case letters, digits, `_`), quoted here, so the
//! statements built from them carry nothing a user wrote but those names;
//! every value is a bind parameter.

use std::sync::Arc;

/// The cursor table, in the target table's schema.
pub const CURSORS_TABLE: &str = "ferry_cursors";

/// A column the sink needs: its name, the `information_schema` data types
/// it accepts, and whether it must take NULL.
pub struct Column {
    pub name: &'static str,
    pub types: &'static [&'static str],
    pub nullable: bool,
}

const TEXT: &[&str] = &["text", "character varying"];
const BIGINT: &[&str] = &["bigint"];

/// The entries table's columns.
pub const ENTRY_COLUMNS: [Column; 7] = [
    Column { name: "ledger", types: TEXT, nullable: false },
    Column { name: "incarnation", types: BIGINT, nullable: false },
    Column { name: "id", types: BIGINT, nullable: false },
    Column { name: "ts", types: BIGINT, nullable: false },
    Column { name: "key", types: TEXT, nullable: true },
    Column { name: "hash", types: TEXT, nullable: true },
    // `json` keeps the payload's exact text, which the hash chain hashed;
    // `jsonb` (tables made before) is still written, but its chain cannot
    // be checked.
    Column { name: "payload", types: &["json", "jsonb"], nullable: false },
];
/// The unique key `ON CONFLICT` names, sorted.
pub const ENTRY_KEY: [&str; 3] = ["id", "incarnation", "ledger"];

/// The cursor table's columns.
pub const CURSOR_COLUMNS: [Column; 5] = [
    Column { name: "exporter", types: TEXT, nullable: false },
    Column { name: "ledger", types: TEXT, nullable: false },
    Column { name: "incarnation", types: BIGINT, nullable: false },
    Column { name: "id", types: BIGINT, nullable: false },
    Column { name: "updated_at", types: &["timestamp with time zone"], nullable: false },
];
/// The cursor table's unique key, sorted.
pub const CURSOR_KEY: [&str; 2] = ["exporter", "ledger"];

/// `$1` schema, `$2` table: each column's name, type, whether it takes
/// NULL, and whether an insert may leave it out (a default, identity or
/// generated column).
pub const COLUMNS: &str = "SELECT column_name::text, data_type::text, is_nullable = 'YES', \
     column_default IS NOT NULL OR is_identity = 'YES' OR is_generated <> 'NEVER' \
     FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2";

/// `$1` the quoted qualified table, `$2` the key's columns sorted, `$3`
/// their number: is there a unique index `ON CONFLICT (…)` can use (not
/// partial, not on expressions, not deferrable)?
pub const UNIQUE_KEY: &str = "SELECT EXISTS (SELECT 1 FROM pg_index i \
     WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indimmediate \
     AND i.indpred IS NULL AND i.indexprs IS NULL AND i.indnkeyatts = $3 \
     AND (SELECT array_agg(a.attname::text ORDER BY a.attname::text) FROM pg_attribute a \
          WHERE a.attrelid = i.indrelid AND a.attnum = ANY ((i.indkey::int2[])[0:i.indnkeyatts - 1])) = $2::text[])";

/// `$1` the quoted qualified table, `$2` the privileges needed
/// (`'SELECT, INSERT'`).
pub const PRIVILEGES: &str = "SELECT has_table_privilege($1, $2)";

/// The schema unqualified names resolve to.
pub const CURRENT_SCHEMA: &str = "SELECT current_schema()::text";

/// The type of the entries table's `payload` column, which the INSERT
/// casts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadType {
    /// The exact text: the chain check recomputes hashes from it.
    Json,
    /// Parsed and normalised (key order, whitespace, numbers): the text
    /// the chain hashed is gone.
    Jsonb,
}

impl PayloadType {
    /// From `information_schema`'s `data_type`.
    pub fn from_data_type(data_type: &str) -> Option<Self> {
        match data_type {
            "json" => Some(Self::Json),
            "jsonb" => Some(Self::Jsonb),
            _ => None,
        }
    }

    fn sql(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Jsonb => "jsonb",
        }
    }
}

/// The statements of one configured table, built once.
#[derive(Debug)]
pub struct Statements {
    /// `"schema"."table"`, for `to_regclass` and messages.
    pub table: String,
    pub cursors: String,
    pub create_table: Arc<str>,
    pub create_cursors: Arc<str>,
    pub insert: Arc<str>,
    pub upsert_cursor: Arc<str>,
    pub read_cursor: Arc<str>,
    pub summary: Arc<str>,
    pub check: Arc<str>,
    /// `$3` the id after which, `$4` how many, `$5` the last id: the
    /// incarnation's rows in id order, a page at a time, for the chain
    /// check.
    pub chain_rows: Arc<str>,
    /// The table's payload column type (what `create_table` makes until
    /// the table was checked).
    pub payload: PayloadType,
}

impl Statements {
    pub fn new(schema: &str, table: &str) -> Self {
        let t = format!("\"{schema}\".\"{table}\"");
        let c = format!("\"{schema}\".\"{CURSORS_TABLE}\"");
        let s = |text: String| Arc::<str>::from(text);
        Self {
            create_table: s(format!(
                "CREATE TABLE IF NOT EXISTS {t} (ledger text NOT NULL, incarnation bigint NOT NULL, \
                 id bigint NOT NULL, ts bigint NOT NULL, key text, hash text, payload json NOT NULL, \
                 PRIMARY KEY (ledger, incarnation, id))"
            )),
            create_cursors: s(format!(
                "CREATE TABLE IF NOT EXISTS {c} (exporter text NOT NULL, ledger text NOT NULL, \
                 incarnation bigint NOT NULL, id bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(), \
                 PRIMARY KEY (exporter, ledger))"
            )),
            insert: insert_sql(&t, PayloadType::Json),
            // Moves only from the id it should hold (`$5`: right before the
            // batch, or where the runtime moved on from), or over another
            // incarnation's row: no row comes back otherwise, and the
            // delivery is refused (the destination moved: prepare again).
            upsert_cursor: s(format!(
                "INSERT INTO {c} AS c (exporter, ledger, incarnation, id, updated_at) \
                 VALUES ($1, $2, $3, $4, now()) \
                 ON CONFLICT (exporter, ledger) DO UPDATE SET incarnation = EXCLUDED.incarnation, \
                 id = EXCLUDED.id, updated_at = EXCLUDED.updated_at \
                 WHERE c.incarnation <> EXCLUDED.incarnation OR c.id = $5 \
                 RETURNING c.id"
            )),
            read_cursor: s(format!("SELECT incarnation, id FROM {c} WHERE exporter = $1 AND ledger = $2")),
            summary: s(format!("SELECT count(*), min(id), max(id) FROM {t} WHERE ledger = $1 AND incarnation = $2")),
            check: s(format!(
                "SELECT count(*) FILTER (WHERE id BETWEEN $3 AND $4), \
                 count(DISTINCT id) FILTER (WHERE id BETWEEN $3 AND $4), \
                 count(*) FILTER (WHERE id < $3), \
                 count(*) FILTER (WHERE id > $4 AND id >= $3), \
                 min(id), max(id) \
                 FROM {t} WHERE ledger = $1 AND incarnation = $2"
            )),
            chain_rows: s(format!(
                "SELECT id, ts, key, hash, payload::text FROM {t} \
                 WHERE ledger = $1 AND incarnation = $2 AND id > $3 AND id <= $5 ORDER BY id LIMIT $4"
            )),
            payload: PayloadType::Json,
            table: t,
            cursors: c,
        }
    }

    /// The same statements for a table whose payload column is `payload`.
    pub fn with_payload(mut self, payload: PayloadType) -> Self {
        self.insert = insert_sql(&self.table, payload);
        self.payload = payload;
        self
    }
}

/// One statement: one transaction, and one round trip. Ledger and
/// incarnation are the same for every row of a batch. The payload text is
/// cast to the column's type (`json` keeps it as it is).
fn insert_sql(table: &str, payload: PayloadType) -> Arc<str> {
    Arc::from(format!(
        "INSERT INTO {table} (ledger, incarnation, id, ts, key, hash, payload) \
         SELECT $1, $2, u.id, u.ts, u.key, u.hash, u.payload::{} \
         FROM UNNEST($3::bigint[], $4::bigint[], $5::text[], $6::text[], $7::text[]) \
         AS u(id, ts, key, hash, payload) \
         ON CONFLICT (ledger, incarnation, id) DO NOTHING",
        payload.sql()
    ))
}
