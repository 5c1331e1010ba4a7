//! TLS on the listener: a certificate chain and key from PEM files, which
//! `reload` reads again (on SIGHUP) without dropping a connection. A reload
//! that fails keeps the pair in use, so a half-written certificate never
//! takes the server off the air.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Why a certificate or key could not be used; the message names the
/// config key and the file.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

/// The listener's TLS settings, swappable while serving.
pub struct ServerTls {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<TlsAcceptor>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("cert", &self.cert).field("key", &self.key).finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads and checks `cert` (a PEM chain, leaf first) and `key` (a PEM
    /// private key that matches the leaf).
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let acceptor = acceptor(cert, key)?;
        Ok(Self { cert: cert.to_owned(), key: key.to_owned(), current: RwLock::new(acceptor) })
    }

    /// Reads the files again; on success new handshakes use them, on
    /// failure nothing changes.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = acceptor(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
        Ok(())
    }

    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect)
        .map_err(|e| TlsError(format!("server.tls_cert: {}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(TlsError(format!("server.tls_cert: {} holds no PEM certificate", cert.display())));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError(format!("server.tls_key: {}: no PEM private key: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(format!("TLS protocol versions: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| {
            TlsError(format!(
                "server.tls_cert {} and server.tls_key {} do not make a usable pair: {e}",
                cert.display(),
                key.display()
            ))
        })?;
    let mut config = config;
    // h2 first: a client that speaks HTTP/2 gets it (the listener serves
    // both on one port); every other one HTTP/1.1.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
