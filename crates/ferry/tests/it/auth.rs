//! SPEC §4 auth, from outside: a token file that names no token refuses to
//! start instead of turning auth off, its errors name `token_file` and the
//! line, the `Bearer` scheme is matched case-insensitively (RFC 7235), and
//! without a token every `/v1` path answers 401, unknown ones included, so
//! the route table cannot be probed.

use crate::support::{Env, Server, StartError};

/// Starts `ferry serve` with `token_file` holding `tokens`; returns the
/// exit when it refused to start.
async fn serve_with_token_file(env: &Env, tokens: &str) -> Result<Server, StartError> {
    let file = env.config("tokens.txt", tokens);
    let config = env.config("ferry.toml", &format!("[server]\ntoken_file = {:?}\n", file.display().to_string()));
    Server::try_start(&env.data_dir(), Some(&config)).await
}

#[tokio::test]
async fn a_token_file_without_tokens_refuses_to_start_instead_of_turning_auth_off() {
    for text in ["", "\n", "  \n\t\n\n", "# only a comment\n", "# a\n\n   # b\n"] {
        let env = Env::new();
        match serve_with_token_file(&env, text).await {
            Ok(s) => {
                let open = s.get("/v1/ledgers").await;
                panic!(
                    "token file {text:?}: the server started, and GET /v1/ledgers without a token answered {}",
                    open.status
                )
            }
            Err(StartError::Exited(e)) => {
                assert_eq!(e.status.code(), Some(1), "token file {text:?}: {}", e.stderr);
                assert!(e.stderr.contains("token_file has no tokens"), "token file {text:?}: {}", e.stderr);
            }
        }
        assert!(!env.data_dir().exists(), "token file {text:?}: storage was opened before the refusal");
    }
}

#[tokio::test]
async fn a_bad_token_file_line_is_named_by_token_file_and_line() {
    let env = Env::new();
    let Err(StartError::Exited(e)) = serve_with_token_file(&env, "# tokens\ngood-token\n\ntwo words\n").await else {
        panic!("a token with a space inside started the server");
    };
    assert_eq!(e.status.code(), Some(1), "{}", e.stderr);
    assert!(e.stderr.contains("server.token_file"), "{}", e.stderr);
    assert!(e.stderr.contains("line 4"), "{}", e.stderr);
    assert!(!e.stderr.contains("server.tokens"), "the error blames server.tokens: {}", e.stderr);
    assert!(!e.stderr.contains("two words"), "the error echoes the token: {}", e.stderr);
}

#[tokio::test]
async fn comment_and_blank_lines_of_a_token_file_are_skipped() {
    let env = Env::new();
    let s = match serve_with_token_file(&env, "# ops team\n\n  tok-one  \n# tok-commented\ntok-two\n").await {
        Ok(s) => s,
        Err(StartError::Exited(e)) => panic!("refused to start: {}", e.stderr),
    };
    s.get("/v1/ledgers").await.assert_error(401, "unauthorized");
    for token in ["tok-one", "tok-two"] {
        let r = s.send(s.http.get(s.url("/v1/ledgers")).bearer_auth(token)).await;
        assert_eq!(r.status, 200, "{token}: {}", r.text);
    }
    for token in ["# tok-commented", "tok-commented", "#"] {
        let r = s.send(s.http.get(s.url("/v1/ledgers")).bearer_auth(token)).await;
        r.assert_error(401, "unauthorized");
    }
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let env = Env::new();
    let s = env.serve_with("[server]\ntokens = [\"secret\"]\n").await;
    for auth in ["Bearer secret", "bearer secret", "BEARER secret", "bEaReR secret"] {
        let r = s.send(s.http.get(s.url("/v1/ledgers")).header("authorization", auth)).await;
        assert_eq!(r.status, 200, "{auth:?}: {}", r.text);
    }
    // The token itself stays case-sensitive, and other schemes stay refused.
    for auth in ["bearer SECRET", "Bearers secret", "Basic secret", "bearer", "bearer ", "secret"] {
        let r = s.send(s.http.get(s.url("/v1/ledgers")).header("authorization", auth)).await;
        r.assert_error(401, "unauthorized");
    }
}

#[tokio::test]
async fn unknown_v1_routes_answer_401_before_404_when_auth_is_on() {
    let env = Env::new();
    let s = env.serve_with("[server]\ntokens = [\"secret\"]\n").await;
    let probes: [(&str, &str); 7] = [
        ("GET", "/v1/nope"),
        ("GET", "/v1/admin/secrets"),
        ("POST", "/v1/snapshots"),
        ("GET", "/v1/ledgers/audit/entries/extra"),
        ("GET", "/v1"),
        ("DELETE", "/v1/watch"),
        ("PATCH", "/v1/ledgers"),
    ];
    for (method, path) in probes {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let r = s.send(s.http.request(method.clone(), s.url(path))).await;
        assert_eq!(r.status, 401, "{method} {path} without a token: {}", r.text);
        r.assert_error(401, "unauthorized");
        let r = s.send(s.http.request(method.clone(), s.url(path)).bearer_auth("wrong")).await;
        r.assert_error(401, "unauthorized");
        let r = s.send(s.http.request(method.clone(), s.url(path)).bearer_auth("secret")).await;
        assert!(matches!(r.status, 404 | 405), "{method} {path} with the token: {} {}", r.status, r.text);
    }
    // Outside /v1 nothing changed: an unknown path is 404 without a token.
    s.get("/nope").await.assert_error(404, "not_found");
    assert_eq!(s.get("/healthz").await.status, 200);
}

#[tokio::test]
async fn without_tokens_unknown_v1_routes_are_plain_404() {
    let env = Env::new();
    let s = env.serve().await;
    s.get("/v1/nope").await.assert_error(404, "not_found");
}
