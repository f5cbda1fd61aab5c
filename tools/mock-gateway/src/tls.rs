//! TLS for wss:// and https://: a CA and a server certificate for `localhost` and
//! `127.0.0.1`, generated at startup. The CA is written to a PEM file so that clients trust it
//! explicitly (shardgate `--ca-file`), exactly as they would trust Discord's chain.

use std::path::Path;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("generating the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("building the TLS server config: {0}")]
    Rustls(#[from] tokio_rustls::rustls::Error),
    #[error("writing the CA to {path}: {source}")]
    WriteCa {
        path: String,
        source: std::io::Error,
    },
}

/// Generates the CA and server certificate, writes the CA PEM to `ca_out`, and returns an
/// acceptor for the listeners.
pub fn acceptor(ca_out: &Path) -> Result<TlsAcceptor, TlsError> {
    Ok(TlsAcceptor::from(server_config(ca_out)?))
}

/// [`acceptor`]'s server configuration: for a test's own TLS server, one that trusts the same
/// CA file as the mock's.
pub fn server_config(ca_out: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "mock-gateway test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let mut server_params = CertificateParams::new(vec!["localhost".to_owned()])?;
    server_params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    server_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "mock-gateway");
    let server_key = KeyPair::generate()?;
    let server_cert = server_params.signed_by(&server_key, &ca)?;

    write_atomically(ca_out, ca.pem().as_bytes()).map_err(|source| TlsError::WriteCa {
        path: ca_out.display().to_string(),
        source,
    })?;

    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![server_cert.der().clone(), ca.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
        )?;
    Ok(Arc::new(config))
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
