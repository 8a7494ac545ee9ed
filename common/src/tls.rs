//! Transport security of every r2o connection: TLS with rustls (on `ring`),
//! mutual where machines talk. A process has one CA bundle that verifies its
//! peers and one certificate and key it presents, as a server and as a
//! client; all three are PEM files named by settings (`--tls-ca`,
//! `--tls-cert`, `--tls-key`), re-read when they change (Kubernetes rotates
//! mounted Secrets in place). Plain text only with `--insecure`.
//!
//! A server asks every client for a certificate but lets one without any in
//! (people and scripts carry a bearer token instead); a certificate that is
//! presented must chain to the CA and be within its validity, or the
//! handshake fails. Who a caller is, and what it may do, is decided per call
//! ([`crate::access`]).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A TLS setting that cannot be used; names the file and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or held nothing usable.
    #[error("{what} {path}: {message}")]
    File {
        /// Which setting: "CA bundle (--tls-ca)", "certificate (--tls-cert)", "key (--tls-key)".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// rustls refused the material (a key that does not match the certificate, say).
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The three PEM files of one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificates that verify peers (clients' certificates on a server,
    /// the server's certificate on a client).
    pub ca: PathBuf,
    /// This process's certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key of `cert` (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// How a process talks to others: TLS, or plain text by explicit choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// Plain text (`--insecure`): no encryption, and no identity checks.
    Insecure,
    /// TLS with the given files.
    Tls(TlsFiles),
}

impl Transport {
    /// From the settings: `insecure` wins; otherwise all three files are required.
    ///
    /// Errors: a missing file setting, naming the flag and its variable.
    pub fn from_settings(
        insecure: bool,
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> Result<Transport, String> {
        if insecure {
            return Ok(Transport::Insecure);
        }
        let missing: Vec<&str> = [
            (ca.is_none(), "--tls-ca (R2O_TLS_CA)"),
            (cert.is_none(), "--tls-cert (R2O_TLS_CERT)"),
            (key.is_none(), "--tls-key (R2O_TLS_KEY)"),
        ]
        .into_iter()
        .filter_map(|(m, n)| m.then_some(n))
        .collect();
        match (ca, cert, key) {
            (Some(ca), Some(cert), Some(key)) => Ok(Transport::Tls(TlsFiles { ca, cert, key })),
            _ => Err(format!(
                "TLS is on by default and needs {}; `r2o certs init --dir DIR` makes a throwaway CA and certificates, \
                 or pass --insecure (R2O_INSECURE=true) for plain text",
                missing.join(", ")
            )),
        }
    }

    /// The URL scheme of this transport's addresses.
    pub fn scheme(&self) -> &'static str {
        match self {
            Transport::Insecure => "http",
            Transport::Tls(_) => "https",
        }
    }
}

/// A PEM file's bytes, the error naming the setting and the file.
fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File { what, path: path.to_path_buf(), message: e.to_string() })
}

/// The certificates in `pem` (read from `path`): at least one.
fn certs_in(what: &'static str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_err = |message: String| TlsError::File { what, path: path.to_path_buf(), message };
    let certs =
        CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(|e| file_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(file_err("no PEM CERTIFICATE block: expected at least one".into()));
    }
    Ok(certs)
}

/// The private key in `pem` (read from `path`).
fn key_in(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::File {
        what: "key (--tls-key)",
        path: path.to_path_buf(),
        message: format!("{e}: expected one PEM private key (PKCS#8, PKCS#1 or SEC1)"),
    })
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    certs_in(what, path, &read_pem(what, path)?)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    key_in(path, &read_pem("key (--tls-key)", path)?)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(files: &TlsFiles) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs("CA bundle (--tls-ca)", &files.ca)? {
        roots.add(c).map_err(|e| TlsError::File {
            what: "CA bundle (--tls-ca)",
            path: files.ca.clone(),
            message: e.to_string(),
        })?;
    }
    Ok(Arc::new(roots))
}

impl TlsFiles {
    /// A rustls server config: presents `cert`, asks clients for a
    /// certificate chaining to `ca` (optional: token holders have none),
    /// speaks HTTP/2 only (gRPC).
    ///
    /// Errors: unreadable or empty files, a key that does not match.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots(self)?, provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(read_certs("certificate (--tls-cert)", &self.cert)?, read_key(&self.key)?)
            .map_err(|e| {
                TlsError::Config(format!("certificate {} with key {}: {e}", self.cert.display(), self.key.display()))
            })?;
        // h2 for gRPC; http/1.1 for a browser or curl on the controller's
        // status page (issue 24), served on the same port
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// tonic's client TLS settings: verifies the server against `ca` and
    /// presents `cert` (read now: a channel built later reads the files again).
    ///
    /// Errors: unreadable files.
    pub fn client_config(&self) -> Result<tonic::transport::ClientTlsConfig, TlsError> {
        client_config(&self.ca, Some((&self.cert, &self.key)))
    }

    /// The files' modification times and sizes, to notice a rotation.
    fn stamp(&self) -> Vec<Option<(SystemTime, u64)>> {
        [&self.ca, &self.cert, &self.key]
            .iter()
            .map(|p| std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len()))))
            .collect()
    }
}

/// tonic's client TLS settings from a CA file and, when given, a client
/// certificate and key (the CLI may have only the CA and a token).
///
/// Errors: unreadable files.
pub fn client_config(
    ca: &Path,
    identity: Option<(&PathBuf, &PathBuf)>,
) -> Result<tonic::transport::ClientTlsConfig, TlsError> {
    // each file is read once, and parsed now, so a bad file is named here
    // and not as a handshake failure later
    let ca_pem = read_pem("CA bundle (--tls-ca)", ca)?;
    certs_in("CA bundle (--tls-ca)", ca, &ca_pem)?;
    let mut cfg =
        tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(ca_pem));
    if let Some((cert, key)) = identity {
        let (cert_pem, key_pem) = (read_pem("certificate (--tls-cert)", cert)?, read_pem("key (--tls-key)", key)?);
        certs_in("certificate (--tls-cert)", cert, &cert_pem)?;
        key_in(key, &key_pem)?;
        cfg = cfg.identity(tonic::transport::Identity::from_pem(cert_pem, key_pem));
    }
    Ok(cfg)
}

/// A server config that follows its files: [`ReloadingServerConfig::current`]
/// looks at the files at most every `check_every` and rebuilds the config
/// when they changed. A rotation caught half-written (a key that does not
/// match yet) keeps the last good config and is tried again at the next look.
pub struct ReloadingServerConfig {
    files: TlsFiles,
    check_every: Duration,
    state: Mutex<ReloadState>,
}

struct ReloadState {
    config: Arc<rustls::ServerConfig>,
    stamp: Vec<Option<(SystemTime, u64)>>,
    checked: Instant,
}

impl ReloadingServerConfig {
    /// Loads the files now.
    ///
    /// Errors: as [`TlsFiles::server_config`]; a process does not start with bad files.
    pub fn new(files: TlsFiles, check_every: Duration) -> Result<ReloadingServerConfig, TlsError> {
        let config = files.server_config()?;
        let stamp = files.stamp();
        Ok(ReloadingServerConfig {
            files,
            check_every,
            state: Mutex::new(ReloadState { config, stamp, checked: Instant::now() }),
        })
    }

    /// The config to use for a new connection.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.checked.elapsed() >= self.check_every {
            st.checked = Instant::now();
            let stamp = self.files.stamp();
            if stamp != st.stamp {
                match self.files.server_config() {
                    Ok(c) => {
                        tracing::info!(cert = %self.files.cert.display(), "tls certificate files changed; reloaded");
                        st.config = c;
                        st.stamp = stamp;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "tls files changed but cannot be used yet; keeping the old ones")
                    }
                }
            }
        }
        st.config.clone()
    }
}

/// Accepts TCP connections on `listener` and completes TLS handshakes
/// (each within 10 s, each in its own task, so a slow client holds no one
/// up), yielding the established streams for tonic's
/// `serve_with_incoming_shutdown`. A failed handshake (no shared CA, an
/// expired certificate, plain text) is logged at debug and dropped. Ends
/// when `cancel` fires.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<ReloadingServerConfig>,
    cancel: CancellationToken,
) -> impl futures::Stream<Item = std::io::Result<tokio_rustls::server::TlsStream<TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = cancel.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(config.current());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(peer = %peer, error = %e, "tls handshake refused"),
                    Err(_) => tracing::debug!(peer = %peer, "tls handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Why a gRPC server stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Bad TLS files at start.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The address could not be bound.
    #[error("cannot listen on {listen}: {source}")]
    Bind {
        /// The address.
        listen: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The server failed.
    #[error("gRPC server: {0}")]
    Server(#[from] tonic::transport::Error),
}

/// Serves `router` on `listen` with `transport`: TLS connections through
/// [`tls_incoming`] (certificates reloaded when their files change), or
/// plain text. Returns when `cancel` fires and the open calls are done.
///
/// Errors: the address cannot be bound, bad TLS files, or the server fails.
pub async fn serve(
    router: tonic::transport::server::Router,
    listen: std::net::SocketAddr,
    transport: &Transport,
    cancel: CancellationToken,
) -> Result<(), ServeError> {
    match transport {
        Transport::Insecure => {
            router.serve_with_shutdown(listen, cancel.cancelled_owned()).await?;
        }
        Transport::Tls(files) => {
            let config = Arc::new(ReloadingServerConfig::new(files.clone(), Duration::from_secs(10))?);
            let listener = TcpListener::bind(listen).await.map_err(|source| ServeError::Bind { listen, source })?;
            let incoming = tls_incoming(listener, config, cancel.clone());
            router.serve_with_incoming_shutdown(incoming, cancel.cancelled_owned()).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_needs_all_three_files_unless_insecure() {
        assert_eq!(Transport::from_settings(true, None, None, None), Ok(Transport::Insecure));
        let err = Transport::from_settings(false, Some("ca.pem".into()), None, None).unwrap_err();
        assert!(err.contains("--tls-cert (R2O_TLS_CERT)") && err.contains("--tls-key (R2O_TLS_KEY)"), "{err}");
        assert!(!err.contains("--tls-ca"), "{err}");
        assert!(err.contains("--insecure"), "{err}");
        let t = Transport::from_settings(false, Some("a".into()), Some("b".into()), Some("c".into())).unwrap();
        assert_eq!(t.scheme(), "https");
        assert_eq!(Transport::Insecure.scheme(), "http");
    }

    #[test]
    fn unreadable_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not pem").unwrap();
        let files = TlsFiles { ca: ca.clone(), cert: dir.path().join("none.pem"), key: dir.path().join("none.key") };
        let err = files.server_config().unwrap_err().to_string();
        assert!(err.contains("CA bundle (--tls-ca)") && err.contains("ca.pem") && err.contains("expected"), "{err}");
        let err = client_config(&dir.path().join("missing.pem"), None).unwrap_err().to_string();
        assert!(err.contains("missing.pem"), "{err}");
    }
}
