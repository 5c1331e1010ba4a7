//! TLS on the listener (issue #13 item 5b): `[server] tls_cert` and
//! `tls_key` serve HTTPS with a certificate the test makes; SIGHUP swaps in
//! a new pair without a restart; a pair that cannot be used stops `ferry
//! serve` at start naming the key, and is refused at a reload while the
//! old pair stays in use.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::{Env, Server, assert_exit, https_client, run_to_exit, serve_command};

/// A self-signed certificate for 127.0.0.1, as (certificate PEM, key PEM).
fn certificate() -> (String, String) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("generate a certificate");
    (cert.pem(), signing_key.serialize_pem())
}

fn write_pair(dir: &Path, (cert, key): &(String, String)) -> (PathBuf, PathBuf) {
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert).expect("write the certificate");
    std::fs::write(&key_path, key).expect("write the key");
    (cert_path, key_path)
}

fn tls_config(cert: &Path, key: &Path) -> String {
    format!("[server]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n", cert.display(), key.display())
}

async fn healthz(client: &reqwest::Client, server: &Server) -> Result<u16, String> {
    client.get(server.url("/healthz")).send().await.map(|r| r.status().as_u16()).map_err(|e| format!("{e:?}"))
}

#[tokio::test]
async fn https_with_the_configured_certificate_which_sighup_reloads() {
    let env = Env::new();
    let first = certificate();
    let (cert, key) = write_pair(env.dir.path(), &first);
    let config = env.config("ferry.toml", &tls_config(&cert, &key));
    let mut server = Server::start_https(&env.data_dir(), &config, first.0.as_bytes()).await;

    // HTTPS works end to end, appends included; plain HTTP gets no answer.
    let r = server.append("audit", r#"{"payload":{"over":"tls"}}"#).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let plain = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
    let url = format!("http://{}/healthz", server.addr);
    assert!(plain.get(&url).send().await.is_err(), "plain HTTP was answered on the TLS listener");

    // A new pair on disk and a SIGHUP: new connections get the new one.
    let second = certificate();
    write_pair(env.dir.path(), &second);
    let trusts_first = https_client(first.0.as_bytes(), Duration::from_secs(5));
    let trusts_second = https_client(second.0.as_bytes(), Duration::from_secs(5));
    assert!(healthz(&trusts_second, &server).await.is_err(), "the new certificate is not served before SIGHUP");
    server.sighup();
    let deadline = Instant::now() + Duration::from_secs(10);
    while healthz(&trusts_second, &server).await != Ok(200) {
        assert!(Instant::now() < deadline, "the reloaded certificate was not served:\n{}", server.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(healthz(&trusts_first, &server).await.is_err(), "the old certificate is still served after SIGHUP");
    assert!(server.stderr().contains("reloaded the TLS certificate"), "{}", server.stderr());

    // A broken file at the next SIGHUP is refused and the pair in use stays.
    std::fs::write(&cert, "not a certificate\n").expect("break the certificate file");
    server.sighup();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.stderr().contains("was not reloaded") {
        assert!(Instant::now() < deadline, "a failed reload was not logged:\n{}", server.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(server.stderr().contains("server.tls_cert"), "the error names the key:\n{}", server.stderr());
    assert_eq!(healthz(&trusts_second, &server).await, Ok(200), "the pair in use stays after a failed reload");
    assert!(server.is_running());
    server.stop();
}

/// SIGTERM does not wait out the handshake timeout of a TLS connection
/// that never sends its ClientHello.
#[tokio::test]
async fn shutdown_does_not_wait_for_a_silent_tls_handshake() {
    let env = Env::new();
    let pair = certificate();
    let (cert, key) = write_pair(env.dir.path(), &pair);
    let config = env.config("ferry.toml", &format!("{}header_read_timeout = \"60s\"\n", tls_config(&cert, &key)));
    let server = Server::start_https(&env.data_dir(), &config, pair.0.as_bytes()).await;
    let _silent = std::net::TcpStream::connect(server.addr).expect("connect");
    // Let the server accept it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    server.stop();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(20), "SIGTERM took {took:?} with a silent TLS connection (timeout 60 s)");
}

#[tokio::test]
async fn sighup_without_tls_leaves_the_server_running() {
    let env = Env::new();
    let mut server = env.serve().await;
    server.sighup();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(server.is_running(), "SIGHUP ended the server:\n{}", server.stderr());
    assert_eq!(server.get("/healthz").await.status, 200);
    server.stop();
}

#[test]
fn tls_files_that_cannot_be_used_stop_serve_naming_the_key() {
    let env = Env::new();
    let pair = certificate();
    let (cert, key) = write_pair(env.dir.path(), &pair);
    let other_key = env.dir.path().join("other-key.pem");
    std::fs::write(&other_key, certificate().1).expect("write another key");
    let missing = env.dir.path().join("missing.pem");
    let garbage = env.dir.path().join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN NOTHING-----\n").expect("write garbage");

    let cases = [
        (tls_config(&missing, &key), "server.tls_cert"),
        (tls_config(&garbage, &key), "server.tls_cert"),
        (tls_config(&cert, &missing), "server.tls_key"),
        (tls_config(&cert, &cert), "server.tls_key"),
        (tls_config(&cert, &other_key), "do not make a usable pair"),
        (format!("[server]\ntls_cert = \"{}\"\n", cert.display()), "server.tls_key is not"),
        (format!("[server]\ntls_key = \"{}\"\n", key.display()), "server.tls_cert is not"),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let config = env.config(&format!("case-{i}.toml"), text);
        let data = env.dir.path().join(format!("data-{i}"));
        let out = run_to_exit(serve_command(&data, Some(&config), crate::support::free_port()), None);
        assert_exit(&out, 1, &format!("case {i}: {text}"));
        assert!(out.stderr.contains(expected), "case {i}: expected {expected:?} in:\n{}", out.stderr);
        assert!(!data.exists(), "case {i}: storage was opened before the TLS files were checked");
    }
}
