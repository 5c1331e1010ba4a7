//! `POST /v1/ledgers/{ledger}/import` (SPEC §7): the restore path. The
//! body is NDJSON, one backup line per entry, as a pinned read
//! (`pins.rs`) writes them; the entries keep their ids, timestamps, keys,
//! idempotency keys and chain hashes. `Store::import` applies them all or
//! none (see its docs for the merge rule), so sending the same body again
//! changes nothing. Admin scope: an import writes ids and times no append
//! could.
//!
//! Each line is checked here the way an append's entry is (`EntryIn`):
//! a bad line is 422 `invalid_entry` naming its line number, and nothing
//! is imported.

use axum::Json;
use axum::extract::State;
use ferry_core::{EntryId, LedgerName};
use ferry_format::chain::{ChainHash, from_hex};
use ferry_store::{ImportEntry, ImportOutcome};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::auth::{Caller, Scope};
use crate::body::RequestBody;
use crate::entries::EntryIn;
use crate::error::ErrorBody;
use crate::extract::{ApiQuery, LedgerParam, LedgerSegment};
use crate::{ApiError, AppState};

/// One backup line (`Entry::write_json_with`). Key, idempotency key and
/// payload stay JSON text until `EntryIn` checks them.
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = BackupLine)]
#[serde(
    deny_unknown_fields,
    expecting = r#"a backup line {"ledger","id","ts","key"?,"hash"?,"idempotency_key"?,"payload"}"#
)]
pub(crate) struct LineIn<'a> {
    #[schema(value_type = LedgerName)]
    ledger: String,
    #[schema(value_type = u64, minimum = 1)]
    id: EntryId,
    /// Unix milliseconds, kept as they were.
    ts: u64,
    #[serde(borrow)]
    #[schema(value_type = Option<String>)]
    key: Option<&'a RawValue>,
    /// The entry's chain hash, checked against the chain here.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    hash: Option<String>,
    #[serde(borrow)]
    #[schema(value_type = Option<String>)]
    idempotency_key: Option<&'a RawValue>,
    #[serde(borrow)]
    #[schema(value_type = serde_json::Value)]
    payload: &'a RawValue,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ImportParams {
    /// The chain hash before the first line's id in the ledger the lines
    /// were read from (its `first_prev_hash` when they start at First).
    #[param(pattern = "^[0-9a-f]{64}$")]
    prev_hash: Option<String>,
}

/// The answer: what the import did, and to which ledger.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Imported)]
struct Imported<'a> {
    #[schema(value_type = LedgerName)]
    ledger: &'a str,
    #[serde(flatten)]
    outcome: ImportOutcome,
}

/// `POST /v1/ledgers/{ledger}/import[?prev_hash=HEX]`: 200 with
/// `{"ledger","imported","present","head","incarnation","created"}`; 409
/// `import_conflict` with the `id` refused.
#[utoipa::path(
    post,
    path = "/ledgers/{ledger}/import",
    operation_id = "import_entries",
    tag = "import",
    params(LedgerParam, ImportParams),
    request_body(
        content = LineIn,
        content_type = "application/x-ndjson",
        description = "NDJSON: one backup line per entry, ids contiguous and ascending, as a pinned read gives them.",
    ),
    responses(
        (status = 200, description = "What the import did.", body = Imported<'_>),
        (status = 400, description = "`invalid_ledger_name` or `invalid_query`.", body = ErrorBody),
        (status = 409, description = "`import_conflict`: `id` names the line refused; nothing is imported.", body = ErrorBody),
        (status = 413, description = "`body_too_large`.", body = ErrorBody),
        (status = 422, description = "`invalid_entry` naming the line, or `empty_batch`; nothing is imported.", body = ErrorBody),
        (status = 503, description = "`store_unavailable` or `shutting_down`.", body = ErrorBody),
        (status = 507, description = "`insufficient_storage`.", body = ErrorBody),
    )
)]
pub(crate) async fn import(
    State(state): State<AppState>,
    caller: Caller,
    LedgerSegment(name): LedgerSegment,
    ApiQuery(params): ApiQuery<ImportParams>,
    RequestBody(body): RequestBody,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Scope::Admin, None)?;
    let name = LedgerName::parse(&name)?;
    let prev_hash = params.prev_hash.as_deref().map(parse_prev_hash).transpose()?;
    let entries = parse_import(&body, &name)?;
    let (from, through) = (entries[0].id, entries[entries.len() - 1].id);
    let outcome = state.store.import(&name, entries, prev_hash).await?;
    tracing::info!(
        ledger = %name,
        from,
        through,
        imported = outcome.imported,
        present = outcome.present,
        head = outcome.head,
        created = outcome.created,
        actor = caller.name(),
        "entries imported"
    );
    let answer = Imported { ledger: name.as_str(), outcome };
    Ok(Json(serde_json::to_value(&answer).expect("an import answer serialises")))
}

/// `prev_hash=`: 64 lower-case hex digits.
fn parse_prev_hash(text: &str) -> Result<ChainHash, ApiError> {
    from_hex(text).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_query",
            format!("prev_hash={text:?} is not a chain hash (64 lower-case hex digits)"),
        )
    })
}

/// Parses an import body: every non-empty line a backup line of
/// `ledger`, their ids contiguous and ascending. The first bad line is 422
/// `invalid_entry`, its message starting `line N: ` (1-based, counting
/// every line of the body); a body without a line is 422 `empty_batch`.
fn parse_import(body: &[u8], ledger: &LedgerName) -> Result<Vec<ImportEntry>, ApiError> {
    let mut entries: Vec<ImportEntry> = Vec::new();
    for (i, line) in body.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let at_line = |message: String| ApiError::unprocessable("invalid_entry", format!("line {}: {message}", i + 1));
        let entry = parse_line(line, ledger).map_err(at_line)?;
        if let Some(before) = entries.last()
            && Some(entry.id) != before.id.checked_add(1)
        {
            return Err(at_line(format!(
                "id {} does not follow id {} of the line before: an import is a run of contiguous ids",
                entry.id, before.id
            )));
        }
        entries.push(entry);
    }
    if entries.is_empty() {
        return Err(ApiError::unprocessable("empty_batch", "the import body holds no backup line"));
    }
    Ok(entries)
}

/// One backup line; the error is the message without its line number.
fn parse_line(line: &[u8], ledger: &LedgerName) -> Result<ImportEntry, String> {
    // serde would take the fields in order from an array too.
    if line.trim_ascii_start().first() != Some(&b'{') {
        return Err("not a JSON object: a backup line is {\"ledger\",\"id\",\"ts\",…,\"payload\"}".to_owned());
    }
    let line: LineIn = serde_json::from_slice(line).map_err(|e| json_error(&e))?;
    if line.ledger != ledger.as_str() {
        return Err(format!("ledger {:?} is not {:?}, the ledger imported into", line.ledger, ledger.as_str()));
    }
    if line.id == 0 {
        return Err("id 0: ids start at 1".to_owned());
    }
    let hash = match line.hash {
        Some(h) => Some(from_hex(&h).ok_or_else(|| format!("hash {h:?} is not 64 lower-case hex digits"))?),
        None => None,
    };
    let checked = EntryIn { payload: line.payload, key: line.key, idempotency_key: line.idempotency_key };
    let entry = checked.into_new_entry(None).map_err(|e| e.message)?;
    Ok(ImportEntry {
        id: line.id,
        ts: line.ts,
        key: entry.key,
        idempotency_key: entry.idempotency_key,
        hash,
        payload: entry.payload,
    })
}

/// serde_json's message with the column, not its "line 1" (a line's
/// number is the body's, given by the caller).
fn json_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    match text.strip_suffix(&position) {
        Some(message) => format!("{message} (column {})", e.column()),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audit() -> LedgerName {
        LedgerName::parse("audit").unwrap()
    }

    fn refused(body: &str) -> ApiError {
        parse_import(body.as_bytes(), &audit()).expect_err(body)
    }

    #[test]
    fn backup_lines_parse_with_every_field_and_empty_lines_are_skipped() {
        let hash = "ab".repeat(32);
        let body = format!(
            "{{\"ledger\":\"audit\",\"id\":7,\"ts\":100,\"key\":\"k\",\"hash\":\"{hash}\",\"idempotency_key\":\"i-7\",\"payload\":{{\"a\": 1}}}}\n\
             \n   \n\
             {{\"ledger\":\"audit\",\"id\":8,\"ts\":100,\"payload\":null}}"
        );
        let entries = parse_import(body.as_bytes(), &audit()).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!((entries[0].id, entries[0].ts, entries[0].key.as_deref()), (7, 100, Some("k")));
        assert_eq!(entries[0].idempotency_key.as_deref(), Some("i-7"));
        assert_eq!(entries[0].hash, Some([0xab; 32]));
        assert_eq!(entries[0].payload.as_str(), r#"{"a":1}"#);
        assert_eq!((entries[1].id, entries[1].hash, entries[1].payload.as_str()), (8, None, "null"));
    }

    #[test]
    fn a_bad_line_is_422_invalid_entry_naming_its_line() {
        let good = r#"{"ledger":"audit","id":1,"ts":5,"payload":1}"#;
        for (bad, message) in [
            ("{", "line 3: EOF while parsing an object (column 1)"),
            ("[1]", "line 3: not a JSON object"),
            (r#"["audit",2,5,null,null,null,1]"#, "line 3: not a JSON object"),
            ("1", "line 3: not a JSON object"),
            ("{}", "line 3: missing field `ledger`"),
            (r#"{"ledger":"audit","id":2,"ts":5}"#, "line 3: missing field `payload`"),
            (r#"{"ledger":"audit","id":2,"ts":5,"payload":1,"x":1}"#, "line 3: unknown field `x`"),
            (r#"{"ledger":"audit","id":2,"id":2,"ts":5,"payload":1}"#, "line 3: duplicate field `id`"),
            (r#"{"ledger":"other","id":2,"ts":5,"payload":1}"#, r#"line 3: ledger "other" is not "audit""#),
            (r#"{"ledger":"audit","id":3,"ts":5,"payload":1}"#, "line 3: id 3 does not follow id 1"),
            (r#"{"ledger":"audit","id":2,"ts":-1,"payload":1}"#, "line 3: invalid value"),
            (r#"{"ledger":"audit","id":2,"ts":5,"hash":"AB","payload":1}"#, r#"line 3: hash "AB" is not 64"#),
            (r#"{"ledger":"audit","id":2,"ts":5,"payload":{"a":1e999}}"#, "line 3: payload.a: the number 1e999"),
            (r#"{"ledger":"audit","id":2,"ts":5,"payload":{"b":1,"b":2}}"#, "line 3: payload.b: duplicate"),
            (r#"{"ledger":"audit","id":2,"ts":5,"key":"\ud800","payload":1}"#, "line 3: key: the string holds"),
            (r#"{"ledger":"audit","id":2,"ts":5,"key":5,"payload":1}"#, "line 3: key: invalid type"),
            (r#"{"ledger":"audit","id":2,"ts":5,"idempotency_key":"\udc00","payload":1}"#, "line 3: idempotency_key: "),
        ] {
            let err = refused(&format!("{good}\n\n{bad}\n"));
            assert_eq!((err.status.as_u16(), err.code), (422, "invalid_entry"), "{bad}: {}", err.message);
            assert!(err.message.starts_with(message), "{bad}: {}", err.message);
        }
        let hash = "ab".repeat(32).to_uppercase();
        let err = refused(&format!(r#"{{"ledger":"audit","id":1,"ts":5,"hash":"{hash}","payload":1}}"#));
        assert!(err.message.starts_with("line 1: hash "), "{}", err.message);
        assert!(refused(r#"{"ledger":"audit","id":0,"ts":5,"payload":1}"#).message.starts_with("line 1: id 0"));
    }

    #[test]
    fn an_empty_body_is_422_empty_batch() {
        for body in ["", "\n", " \n\n\t\n"] {
            let err = refused(body);
            assert_eq!((err.status.as_u16(), err.code), (422, "empty_batch"), "{body:?}");
        }
    }

    #[test]
    fn prev_hash_is_64_lower_case_hex_digits() {
        assert_eq!(parse_prev_hash(&"0f".repeat(32)).unwrap(), [0x0f; 32]);
        for bad in ["", "0f", &"0F".repeat(32), &"zz".repeat(32), &"0f".repeat(33)] {
            let err = parse_prev_hash(bad).expect_err(bad);
            assert_eq!((err.status.as_u16(), err.code), (400, "invalid_query"), "{bad}");
        }
    }
}
