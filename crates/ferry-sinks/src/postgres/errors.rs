//! How the sink sorts PostgreSQL's answers: retryable or permanent at
//! delivery, and which of them refuse the config at build time. Pure, by
//! SQLSTATE and sqlx's error kinds, unit-tested in `tests.rs`.

/// What a failure means for the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// It may work later: connection, I/O, timeouts, a serialization
    /// failure, a server shutting down or short of resources.
    Retryable,
    /// It will fail the same way until a person acts: a missing table or
    /// column, a type mismatch, a privilege, bad credentials, bad data.
    Permanent,
}

/// Sorts a SQLSTATE. PostgreSQL's transient classes are retried; every
/// other class is permanent (nothing is skipped: the ledger stops in
/// `failed`, or its batch is dead-lettered).
pub fn sqlstate(code: &str) -> Kind {
    let class = code.get(..2).unwrap_or("");
    match (class, code) {
        // read_only_sql_transaction: a standby, during a failover.
        (_, "25006") => Kind::Retryable,
        // connection_exception, transaction_rollback (serialization
        // failure, deadlock), insufficient_resources (disk full, too many
        // connections), object_not_in_prerequisite_state (lock not
        // available), operator_intervention (admin / crash shutdown,
        // cannot connect now, statement timeout), system_error (I/O).
        ("08" | "40" | "53" | "55" | "57" | "58", _) => Kind::Retryable,
        _ => Kind::Permanent,
    }
}

/// Sorts any sqlx error.
pub fn classify(error: &sqlx::Error) -> Kind {
    match error {
        sqlx::Error::Database(e) => e.code().map_or(Kind::Permanent, |c| sqlstate(&c)),
        sqlx::Error::Io(e) if tls_rejection(e).is_some() => Kind::Permanent,
        sqlx::Error::Io(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => Kind::Retryable,
        // The server refused TLS, or the certificate files did not load.
        sqlx::Error::Tls(_) => Kind::Permanent,
        sqlx::Error::Configuration(_)
        | sqlx::Error::InvalidArgument(_)
        | sqlx::Error::RowNotFound
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Encode(_)
        | sqlx::Error::Decode(_) => Kind::Permanent,
        _ => Kind::Retryable,
    }
}

/// The TLS library's verdict inside an I/O error (a certificate the
/// configured roots do not trust, a name that does not match).
pub fn tls_rejection(error: &std::io::Error) -> Option<&rustls::Error> {
    error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

/// At build time, while connecting: the config key a definite refusal is
/// about, or `None` when the server was not reached (build goes on and
/// connects later).
pub fn connect_refusal(error: &sqlx::Error, ca_file: bool) -> Option<&'static str> {
    let tls_field = if ca_file { "config.ca_file" } else { "config.tls" };
    match error {
        sqlx::Error::Database(e) => match e.code().as_deref() {
            // invalid_authorization_specification, invalid_password,
            // invalid_catalog_name (no such database), insufficient_privilege
            // (no CONNECT on the database).
            Some(code) if code.starts_with("28") || code == "3D000" || code == "42501" => Some("config.url"),
            _ => None,
        },
        sqlx::Error::Io(e) if tls_rejection(e).is_some() => Some(tls_field),
        sqlx::Error::Tls(_) => Some(tls_field),
        sqlx::Error::Configuration(_) => Some("config.url"),
        _ => None,
    }
}

/// At build time, while checking or creating the table: whether the
/// server's answer refuses `config.table` (a privilege, a missing schema,
/// anything but a lost connection).
pub fn table_refusal(error: &sqlx::Error) -> bool {
    classify(error) == Kind::Permanent
}
