//! `GET /openapi.json`: the OpenAPI 3.1 document of `/v1` (SPEC §4).
//!
//! The document is generated, never written: every `/v1` route is
//! registered through `utoipa_axum::routes!` (`lib.rs`, `v1_routes`), which
//! takes only handlers with a `#[utoipa::path]` and routes each at the path
//! and methods that annotation names, and the schemas are derived from the
//! wire types the handlers serialise. So a route cannot be served without
//! being documented, nor documented at a path it is not served at.
//!
//! The document needs a token like `/v1` when tokens are configured (any
//! valid token, whatever its scopes): it names every route, and an
//! unauthenticated caller may not probe the route table (`auth.rs`).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::http::header;
use axum::response::IntoResponse;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{RefOr, Response, ResponseBuilder};

use crate::error::ErrorBody;

/// The security scheme's name in the document.
pub(crate) const BEARER: &str = "bearer";

/// What the document says besides its paths.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "ferry",
        description = "ferry's HTTP API: durable append-only ledgers, their exporters, outbox sources and \
                       snapshot pins. Every error answers `{\"error\":{\"code\",\"message\"}}` with a fitting \
                       status. When the server has tokens configured, every call needs \
                       `Authorization: Bearer <token>`; without tokens the API is open.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "ledgers", description = "Ledgers: create, list, inspect, delete."),
        (name = "entries", description = "Append and read a ledger's entries."),
        (name = "watch", description = "Server-Sent Events: new entries, system events."),
        (name = "exporters", description = "Exporters: status, pause, resume, reset, range check."),
        (name = "sources", description = "Outbox sources: status."),
        (name = "health", description = "Whether data moves: stuck exporters and sources."),
        (name = "pins", description = "Snapshot pins for backups, and the pinned read."),
        (name = "import", description = "The restore path: backup lines back into a ledger."),
    ),
)]
struct Base;

/// The whole document: `Base` with the `/v1` paths collected by the router
/// nested under `/v1`, the bearer scheme, and the answers every `/v1` call
/// may give.
pub(crate) fn document(v1: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    let mut doc = Base::openapi().nest("/v1", v1);
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "A token of `[server] tokens` (or `token_file`); needed only when the server has tokens. \
                     Its scopes (read, append, watch, admin) decide what it may do.",
                ))
                .build(),
        ),
    );
    for (name, response) in common_responses() {
        components.responses.insert(name.to_owned(), RefOr::T(response));
    }
    doc.security = Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
    add_common_responses(&mut doc);
    doc
}

/// Answers any `/v1` call may give, whatever its route.
fn common_responses() -> BTreeMap<&'static str, Response> {
    let error = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                utoipa::openapi::ContentBuilder::new()
                    .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name("ErrorBody"))))
                    .build(),
            )
            .build()
    };
    BTreeMap::from([
        ("Unauthorized", error("`unauthorized`: tokens are configured and none, or an unknown one, was given.")),
        ("Forbidden", error("`forbidden`: the token's scopes or ledgers do not cover the call.")),
    ])
}

/// Every operation may answer 401 and 403 (the token check runs before any
/// route's own).
fn add_common_responses(doc: &mut utoipa::openapi::OpenApi) {
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
            &mut item.head,
            &mut item.options,
            &mut item.trace,
        ];
        for operation in operations.into_iter().flatten() {
            for (status, name) in [("401", "Unauthorized"), ("403", "Forbidden")] {
                operation
                    .responses
                    .responses
                    .entry(status.to_owned())
                    .or_insert_with(|| RefOr::Ref(utoipa::openapi::Ref::from_response_name(name)));
            }
        }
    }
}

/// The document as served: rendered once when the router is built.
#[derive(Clone)]
pub(crate) struct Rendered(Bytes);

impl Rendered {
    pub(crate) fn of(doc: &utoipa::openapi::OpenApi) -> Self {
        Self(Bytes::from(serde_json::to_vec(doc).expect("the OpenAPI document serialises")))
    }

    pub(crate) fn response(&self) -> axum::response::Response {
        ([(header::CONTENT_TYPE, "application/json")], self.0.clone()).into_response()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// Generators name a client's methods after operation ids, and tags
    /// group them: each operation has a unique id and a declared tag.
    #[test]
    fn every_operation_has_a_unique_id_and_a_declared_tag() {
        let doc = crate::openapi();
        let declared: BTreeSet<String> = doc.tags.iter().flatten().map(|t| t.name.clone()).collect();
        let mut ids = BTreeSet::new();
        for (path, item) in &doc.paths.paths {
            let operations = [&item.get, &item.put, &item.post, &item.delete, &item.patch];
            for operation in operations.into_iter().flatten() {
                let id = operation.operation_id.clone().unwrap_or_else(|| panic!("{path}: no operation id"));
                assert!(ids.insert(id.clone()), "{path}: operation id {id} is used twice");
                let tags = operation.tags.as_deref().unwrap_or_default();
                assert!(!tags.is_empty() && tags.iter().all(|t| declared.contains(t)), "{path}: tags {tags:?}");
            }
        }
        assert!(ids.len() >= 25, "{} operations", ids.len());
    }
}
