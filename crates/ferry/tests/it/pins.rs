//! `/v1/pins` against a real server: a pin is the cut of every ledger, at
//! most `max_pins` live (429 beyond), renewed, deleted, listed with its
//! age, and expired by the server within about a second of its deadline.

use reqwest::Method;
use serde_json::Value;

use crate::support::{Env, eventually};

#[tokio::test]
async fn pins_are_taken_bounded_renewed_listed_deleted_and_expired() {
    let env = Env::new();
    let server = env.serve_with("[server]\nmax_pins = 2\n").await;
    for n in 0..3 {
        let r = server.append("audit", format!(r#"{{"entries":[{{"payload":{{"n":{n}}}}}]}}"#)).await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    assert_eq!(server.put("/v1/ledgers/empty").await.status, 201);

    let r = server.post("/v1/pins", r#"{"ttl_ms":60000}"#).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let pin = r.json();
    assert_eq!(pin["heads"], serde_json::json!({ "audit": 3, "empty": 0 }), "{pin}");
    assert_eq!(pin["firsts"], serde_json::json!({ "audit": 1, "empty": 1 }), "{pin}");
    assert!(pin["incarnations"]["audit"].as_u64().is_some(), "{pin}");
    let id = pin["pin"].as_str().expect("the id is a string").to_owned();
    assert!(pin["expires_at"].as_u64().unwrap() >= pin["created_at"].as_u64().unwrap() + 60_000);

    // A short one, then the limit.
    let short = server.post("/v1/pins", r#"{"ttl_ms":1000}"#).await;
    assert_eq!(short.status, 201, "{}", short.text);
    server.post("/v1/pins", "").await.assert_error(429, "too_many_pins");
    server.post("/v1/pins", r#"{"ttl_ms":5}"#).await.assert_error(422, "invalid_ttl");
    server.post("/v1/pins", r#"{"ttl":5}"#).await.assert_error(422, "invalid_entry");

    let list = server.get("/v1/pins").await;
    assert_eq!(list.status, 200);
    let pins = list.json();
    assert_eq!(pins.as_array().unwrap().len(), 2, "{pins}");
    assert!(pins.as_array().unwrap().iter().all(|p| p["age_ms"].as_u64().is_some()), "{pins}");

    // The short one expires; the server deletes it and frees its place.
    eventually("the short pin expires", async || {
        server.get("/v1/pins").await.json().as_array().is_some_and(|p| p.len() == 1)
    })
    .await;
    let short_id = short.json()["pin"].as_str().unwrap().to_owned();
    server.post(&format!("/v1/pins/{short_id}/renew"), "").await.assert_error(404, "pin_not_found");
    assert_eq!(server.post("/v1/pins", "").await.status, 201, "an expired pin frees its place");

    let renewed = server.post(&format!("/v1/pins/{id}/renew"), r#"{"ttl_ms":120000}"#).await;
    assert_eq!(renewed.status, 200, "{}", renewed.text);
    assert!(renewed.json()["expires_at"].as_u64() > pin["expires_at"].as_u64());
    let delete = |path: String| server.send(crate::support::http().request(Method::DELETE, server.url(&path)));
    assert_eq!(delete(format!("/v1/pins/{id}")).await.status, 204);
    delete(format!("/v1/pins/{id}")).await.assert_error(404, "pin_not_found");
    delete("/v1/pins/not-a-number".into()).await.assert_error(404, "pin_not_found");
    let left: Value = server.get("/v1/pins").await.json();
    assert_eq!(left.as_array().unwrap().len(), 1);
}
