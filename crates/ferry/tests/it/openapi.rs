//! `GET /openapi.json` (SPEC §4): the served document is the one built
//! from the list `/v1` is routed from (`ferry_api::openapi`), every path and
//! method it names is served and no other method on its paths is, it parses
//! as OpenAPI 3.1 with every reference resolving and every path parameter
//! declared, real answers (errors included) match the schemas it gives
//! them, and with tokens configured it needs one, like `/v1`.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::Value;

use crate::support::{Env, Resp, Server};

/// The methods an OpenAPI path item may hold that axum routes by name
/// (HEAD is left out: axum answers it from a GET route by itself).
const METHODS: [&str; 7] = ["get", "put", "post", "delete", "patch", "options", "trace"];

/// The (path, method) pairs of a document, e.g. `("/v1/pins/{id}", "delete")`.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_object().expect("the document has paths");
    let mut out = BTreeSet::new();
    for (path, item) in paths {
        for method in METHODS {
            if item.get(method).is_some() {
                out.insert((path.clone(), method.to_owned()));
            }
        }
    }
    out
}

/// A concrete URL path for a templated one: any value does, the point is
/// that a route answers rather than the router's fallback.
fn concrete(path: &str) -> String {
    path.replace("{ledger}", "probe").replace("{name}", "probe").replace("{id}", "1")
}

/// Whether an answer is the router's own "no such route" or "no such
/// method" rather than a route's.
fn unrouted(status: u16, body: &str) -> bool {
    let code = serde_json::from_str::<Value>(body).ok().and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
    status == 405 || (status == 404 && code.as_deref() == Some("not_found"))
}

async fn document(server: &Server, token: Option<&str>) -> (u16, String, String) {
    let mut req = server.http.get(server.url("/openapi.json"));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let r = server.send(req).await;
    (r.status, r.content_type, r.text)
}

#[tokio::test]
async fn every_v1_route_is_documented_and_every_documented_operation_is_served() {
    let env = Env::new();
    let server = env.serve().await;
    let (status, content_type, text) = document(&server, None).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(content_type, "application/json");
    let served: Value = serde_json::from_str(&text).expect("the document is JSON");
    // The list `/v1` is routed from, as the library builds it: the served
    // document is exactly that, so no route is missing from it.
    let routed = serde_json::to_value(ferry_api::openapi()).expect("the document serialises");
    assert_eq!(served, routed, "the served document is not the one the routes are built from");
    let documented = operations(&served);
    assert!(documented.len() >= 25, "only {} operations documented: {documented:?}", documented.len());
    assert!(documented.iter().all(|(p, _)| p.starts_with("/v1/")), "{documented:?}");

    for (path, method) in &documented {
        let url = server.url(&concrete(path));
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("an HTTP method");
        // Headers only: the watch streams answer 200 and stay open.
        let r = server.http.request(method.clone(), &url).send().await.expect("send");
        let status = r.status().as_u16();
        let body = if status == 200 { String::new() } else { r.text().await.unwrap_or_default() };
        assert!(!unrouted(status, &body), "{method} {path} is documented but not served: {status} {body}");
    }

    // No method beyond the documented ones is served on a documented path.
    let paths: BTreeSet<&String> = documented.iter().map(|(p, _)| p).collect();
    for path in paths {
        for method in METHODS.iter().filter(|m| !documented.contains(&(path.clone(), m.to_string()))) {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("an HTTP method");
            let r = server.send(server.http.request(method.clone(), server.url(&concrete(path)))).await;
            r.assert_error(405, "method_not_allowed");
        }
    }
}

#[tokio::test]
async fn the_document_parses_as_openapi_3_1_and_every_reference_resolves() {
    let env = Env::new();
    let server = env.serve().await;
    let (status, _, text) = document(&server, None).await;
    assert_eq!(status, 200, "{text}");
    let spec = oas3::from_json(&text).unwrap_or_else(|e| panic!("not an OpenAPI 3.1 document: {e}"));
    let version = spec.validate_version().expect("a supported OpenAPI version");
    assert_eq!((version.major, version.minor), (3, 1));

    let doc: Value = serde_json::from_str(&text).expect("JSON");
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(refs.len() > 20, "only {} references", refs.len());
    for reference in &refs {
        let pointer =
            reference.strip_prefix('#').unwrap_or_else(|| panic!("a reference outside the document: {reference}"));
        assert!(doc.pointer(pointer).is_some(), "the reference {reference} resolves to nothing");
    }

    // Each `{param}` of a path is a required path parameter of each of its
    // operations, and each operation is tagged and answers something.
    for (path, method) in operations(&doc) {
        let op = &doc["paths"][&path][&method];
        let declared: BTreeSet<&str> = op["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["in"] == "path")
            .inspect(|p| assert_eq!(p["required"], true, "{method} {path}: optional path parameter {p}"))
            .filter_map(|p| p["name"].as_str())
            .collect();
        let templated: BTreeSet<&str> =
            path.split('/').filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}'))).collect();
        assert_eq!(declared, templated, "{method} {path}: path parameters");
        assert!(op["tags"].as_array().is_some_and(|t| !t.is_empty()), "{method} {path}: no tag");
        let responses = op["responses"].as_object().expect("responses");
        assert!(responses.keys().any(|s| s.starts_with('2')), "{method} {path}: no success answer");
        assert!(responses.contains_key("401"), "{method} {path}: 401 is not documented");
    }

    // The bearer scheme is declared and required at the top.
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer", "{}", doc["components"]);
    assert_eq!(doc["security"], serde_json::json!([{"bearer": []}]));
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => collect_refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn with_tokens_the_document_needs_one_of_any_scope() {
    let env = Env::new();
    let config = "[server]\ntokens = [\"secret\"]\n\
                  [[server.scoped_tokens]]\nname = \"reader\"\nsecret = \"reader-secret\"\nledgers = [\"audit-*\"]\ncan = [\"read\"]\n";
    let server = env.serve_with(config).await;
    server.get("/openapi.json").await.assert_error(401, "unauthorized");
    let wrong = server.send(server.http.get(server.url("/openapi.json")).bearer_auth("not-a-token")).await;
    wrong.assert_error(401, "unauthorized");
    for token in ["secret", "reader-secret"] {
        let (status, _, text) = document(&server, Some(token)).await;
        assert_eq!(status, 200, "token {token}: {text}");
        assert_eq!(serde_json::from_str::<Value>(&text).expect("JSON")["openapi"], "3.1.0");
    }
}

/// The document, to look up what it says a route answers.
struct Document(Value);

impl Document {
    /// The schema the document gives `status` of `method path` in `media`,
    /// made a standalone JSON Schema 2020-12 whose `#/components/…`
    /// references resolve (the components ride along).
    fn schema(&self, path: &str, method: &str, status: u16, media: &str) -> Value {
        let mut response = &self.0["paths"][path][method]["responses"][status.to_string()];
        assert!(!response.is_null(), "{method} {path} answered {status}, which the document does not list");
        if let Some(reference) = response["$ref"].as_str() {
            response = self.0.pointer(&reference[1..]).expect("a resolving response reference");
        }
        let mut schema = response["content"][media]["schema"].clone();
        assert!(schema.is_object(), "{method} {path} {status}: no {media} schema in {response}");
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema".into();
        schema["components"] = self.0["components"].clone();
        schema
    }

    /// Asserts that a real answer is one the document describes: its
    /// status is listed, and its body (each line of NDJSON) fits the schema.
    #[track_caller]
    fn check(&self, path: &str, method: &str, r: &Resp) {
        let media = r.content_type.split(';').next().unwrap_or_default().trim();
        let validator = jsonschema::draft202012::new(&self.schema(path, method, r.status, media))
            .unwrap_or_else(|e| panic!("{method} {path}: the schema does not compile: {e}"));
        let bodies: Vec<&str> = match media {
            "application/x-ndjson" => r.text.lines().collect(),
            _ => vec![r.text.as_str()],
        };
        assert!(!bodies.is_empty(), "{method} {path}: an empty answer");
        for body in bodies {
            let instance: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{method} {path}: {e}: {body}"));
            if let Err(e) = validator.validate(&instance) {
                panic!("{method} {path} {}: the answer does not fit its schema: {e}\n{body}", r.status);
            }
        }
    }
}

#[tokio::test]
async fn real_answers_fit_the_schemas_the_document_gives_them() {
    let env = Env::new();
    let config = "[[exporters]]\nname = \"ex\"\nsink = \"stdout\"\nledgers = [\"audit\"]\n";
    let s = env.serve_with(config).await;
    let doc = Document(serde_json::from_str(&document(&s, None).await.2).expect("JSON"));
    for (name, schema) in doc.0["components"]["schemas"].as_object().expect("component schemas") {
        let mut schema = schema.clone();
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema".into();
        jsonschema::meta::validate(&schema).unwrap_or_else(|e| panic!("schema {name} is not JSON Schema: {e}"));
    }
    let ledger = "/v1/ledgers/{ledger}";
    let entries = "/v1/ledgers/{ledger}/entries";
    // The schemas bite: an answer of another shape does not fit.
    for (path, method, status, wrong) in [
        (ledger, "get", 200, serde_json::json!({"name": "audit"})),
        (ledger, "get", 404, serde_json::json!({"error": {"code": "ledger_not_found"}})),
        (entries, "post", 201, serde_json::json!({"ids": ["1"]})),
        (
            entries,
            "get",
            200,
            serde_json::json!({"entries": [{"ledger": "Audit", "id": 1, "ts": 1, "payload": 1}], "next": 2}),
        ),
    ] {
        let validator =
            jsonschema::draft202012::new(&doc.schema(path, method, status, "application/json")).expect("compiles");
        assert!(!validator.is_valid(&wrong), "{method} {path} {status} takes {wrong}");
    }

    doc.check(ledger, "put", &s.put("/v1/ledgers/audit").await);
    doc.check(ledger, "put", &s.put("/v1/ledgers/audit").await);
    doc.check(entries, "post", &s.append("audit", r#"{"payload":{"a":1},"key":"k-1"}"#).await);
    let batch = r#"{"entries":[{"payload":null,"idempotency_key":"i-1"},{"payload":[1,"x"]}],"expected_head":1}"#;
    doc.check(entries, "post", &s.append("audit", batch).await);
    doc.check(entries, "post", &s.append("audit", r#"{"entries":[{"payload":2,"idempotency_key":"i-1"}]}"#).await);
    doc.check(entries, "post", &s.append("audit", r#"{"payload":1,"expected_head":0}"#).await);
    doc.check(entries, "post", &s.append("audit", r#"{"payload":1,"extra":true}"#).await);
    doc.check(entries, "get", &s.get("/v1/ledgers/audit/entries?from=2&limit=2").await);
    doc.check(entries, "get", &s.ndjson("audit", "").await);
    doc.check(entries, "get", &s.get("/v1/ledgers/audit/entries?limit=0").await);
    doc.check(entries, "get", &s.get("/v1/ledgers/absent/entries").await);
    doc.check(ledger, "get", &s.get("/v1/ledgers/audit").await);
    doc.check(ledger, "get", &s.get("/v1/ledgers/Not-A-Name").await);
    doc.check("/v1/ledgers/{ledger}/head", "get", &s.get("/v1/ledgers/audit/head").await);
    s.put("/v1/ledgers/other").await;
    doc.check("/v1/ledgers", "get", &s.get("/v1/ledgers?limit=1").await);
    doc.check("/v1/ledgers", "get", &s.get("/v1/ledgers?after=audit").await);

    let exporter = "/v1/exporters/{name}";
    doc.check("/v1/exporters", "get", &s.get("/v1/exporters").await);
    doc.check(exporter, "get", &s.get("/v1/exporters/ex").await);
    doc.check(exporter, "get", &s.get("/v1/exporters/absent").await);
    doc.check("/v1/exporters/{name}/pause", "post", &s.post("/v1/exporters/ex/pause", "").await);
    doc.check("/v1/exporters/{name}/resume", "post", &s.post("/v1/exporters/ex/resume", "").await);
    doc.check("/v1/exporters/{name}/reset", "post", &s.post("/v1/exporters/ex/reset", r#"{"from_id":2}"#).await);
    doc.check("/v1/exporters/{name}/check", "get", &s.get("/v1/exporters/ex/check").await);
    doc.check("/v1/health", "get", &s.get("/v1/health").await);
    doc.check("/v1/sources", "get", &s.get("/v1/sources").await);
    doc.check("/v1/sources/{name}", "get", &s.get("/v1/sources/absent").await);

    let created = s.post("/v1/pins", r#"{"ttl_ms":60000}"#).await;
    doc.check("/v1/pins", "post", &created);
    let pin = created.json()["pin"].as_str().expect("a pin id").to_owned();
    doc.check("/v1/pins", "get", &s.get("/v1/pins").await);
    doc.check("/v1/pins/{id}/renew", "post", &s.post(&format!("/v1/pins/{pin}/renew"), "").await);
    let pinned = "/v1/pins/{id}/ledgers/{ledger}/entries";
    let lines = s.get(&format!("/v1/pins/{pin}/ledgers/audit/entries")).await;
    doc.check(pinned, "get", &lines);
    doc.check(pinned, "get", &s.get(&format!("/v1/pins/{pin}/ledgers/absent/entries")).await);
    let import = "/v1/ledgers/{ledger}/import";
    let restored = lines.text.replace("\"ledger\":\"audit\"", "\"ledger\":\"restored\"");
    // A chained ledger's lines import with the hash before its First.
    let query = match s.get("/v1/ledgers/audit").await.json()["first_prev_hash"].as_str() {
        Some(hash) => format!("?prev_hash={hash}"),
        None => String::new(),
    };
    let req = s.http.post(s.url(&format!("/v1/ledgers/restored/import{query}"))).body(restored);
    let imported = s.send(req).await;
    assert_eq!(imported.status, 200, "{}", imported.text);
    doc.check(import, "post", &imported);
    let req = s.http.post(s.url("/v1/ledgers/restored/import")).body("{\"ledger\":\"restored\"}\n");
    doc.check(import, "post", &s.send(req).await);
    doc.check("/v1/pins/{id}", "delete", &s.send(s.http.delete(s.url("/v1/pins/999"))).await);
}
