//! TLS client configuration shared by the gateway connections and the HTTP clients: rustls
//! with the ring provider, Mozilla's roots (webpki-roots) plus an optional extra PEM root
//! (`--ca-file`, e.g. a TLS mock's CA).

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;

#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("--ca-file {path}: {source}")]
    CaFileRead {
        path: String,
        source: std::io::Error,
    },
    #[error("--ca-file {path}: no PEM certificate in it")]
    CaFileEmpty { path: String },
    #[error("--ca-file {path}: certificate rejected: {source}")]
    CaFileRejected { path: String, source: rustls::Error },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Builds the client config. HTTP/1.1 only (ALPN is not offered; the gateway and the bot
/// both speak HTTP/1.1 upgrades and requests).
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsConfigError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        let display = path.display().to_string();
        let pem = std::fs::read(path).map_err(|source| TlsConfigError::CaFileRead {
            path: display.clone(),
            source,
        })?;
        let mut added = 0;
        for certificate in rustls_pemfile::certs(&mut &pem[..]) {
            let certificate = certificate.map_err(|source| TlsConfigError::CaFileRead {
                path: display.clone(),
                source,
            })?;
            roots
                .add(certificate)
                .map_err(|source| TlsConfigError::CaFileRejected {
                    path: display.clone(),
                    source,
                })?;
            added += 1;
        }
        if added == 0 {
            return Err(TlsConfigError::CaFileEmpty { path: display });
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
