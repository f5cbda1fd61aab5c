//! TLS client configuration shared by the gateway connections and the HTTP clients: rustls
//! with the ring provider, Mozilla's roots (webpki-roots) plus an optional extra PEM root
//! (`--ca-file`, e.g. a TLS mock's CA), and the words for a server certificate it does not
//! trust (every TLS client of the engine reports those the same way).

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

/// What to do about a certificate whose issuer the trust store does not know.
pub const CA_FILE_HINT: &str =
    "for a TLS mock gateway or an internal https endpoint, trust its CA with --ca-file <PEM>";

/// A server certificate that the trust store (Mozilla's roots, plus `--ca-file`) did not
/// verify: its Display says why in words and, where a missing root is the likely cause, names
/// `--ca-file`.
#[derive(Debug, Clone, PartialEq)]
pub struct UntrustedCertificate(pub rustls::CertificateError);

impl UntrustedCertificate {
    /// The certificate problem in a rustls error, if that is what it is.
    pub fn from_rustls(error: &rustls::Error) -> Option<UntrustedCertificate> {
        match error {
            rustls::Error::InvalidCertificate(problem) => {
                Some(UntrustedCertificate(problem.clone()))
            }
            _ => None,
        }
    }
}

impl std::fmt::Display for UntrustedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use rustls::CertificateError as Problem;
        let lead = "the server's certificate is not trusted";
        match &self.0 {
            Problem::UnknownIssuer => write!(
                f,
                "{lead}: it was not issued by a known certificate authority (Mozilla's roots, \
                 plus --ca-file if given); {CA_FILE_HINT}"
            ),
            Problem::BadSignature => write!(
                f,
                "{lead}: it is not correctly signed by its issuer; {CA_FILE_HINT}"
            ),
            Problem::Expired | Problem::ExpiredContext { .. } => write!(
                f,
                "{lead}: it has expired, or this machine's clock is wrong ({})",
                self.0
            ),
            Problem::NotValidYet | Problem::NotValidYetContext { .. } => write!(
                f,
                "{lead}: it is not valid yet, or this machine's clock is wrong ({})",
                self.0
            ),
            Problem::NotValidForName | Problem::NotValidForNameContext { .. } => write!(
                f,
                "{lead}: it is not valid for the URL's host name; check the URL ({})",
                self.0
            ),
            Problem::Revoked => write!(f, "{lead}: it has been revoked"),
            other => write!(f, "{lead}: {other}; {CA_FILE_HINT}"),
        }
    }
}

/// A rustls error for a person: a certificate problem in words ([`UntrustedCertificate`]),
/// anything else as rustls says it.
pub fn error_text(error: &rustls::Error) -> String {
    match UntrustedCertificate::from_rustls(error) {
        Some(untrusted) => untrusted.to_string(),
        None => error.to_string(),
    }
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

#[cfg(test)]
mod tests {
    use rustls::CertificateError;

    use super::*;

    #[test]
    fn an_unknown_issuer_is_said_in_words_with_the_ca_file_fix() {
        let error = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        assert_eq!(
            error_text(&error),
            "the server's certificate is not trusted: it was not issued by a known \
             certificate authority (Mozilla's roots, plus --ca-file if given); for a TLS mock \
             gateway or an internal https endpoint, trust its CA with --ca-file <PEM>"
        );
        let bad_signature = rustls::Error::InvalidCertificate(CertificateError::BadSignature);
        assert!(error_text(&bad_signature).ends_with(CA_FILE_HINT));
    }

    #[test]
    fn problems_a_ca_file_cannot_fix_do_not_suggest_it() {
        for problem in [
            CertificateError::Expired,
            CertificateError::NotValidYet,
            CertificateError::NotValidForName,
            CertificateError::Revoked,
        ] {
            let text = error_text(&rustls::Error::InvalidCertificate(problem.clone()));
            assert!(text.starts_with("the server's certificate is not trusted: "));
            assert!(!text.contains("--ca-file"), "{problem:?}: {text}");
        }
    }

    #[test]
    fn other_tls_errors_keep_rustls_words() {
        let error = rustls::Error::HandshakeNotComplete;
        assert_eq!(error_text(&error), error.to_string());
        assert_eq!(UntrustedCertificate::from_rustls(&error), None);
    }
}
