//! TLS for `wss://` streams, with rustls: the system's roots or a CA file,
//! and an optional client certificate (mutual TLS).

use std::sync::Arc;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::TlsFiles;

/// The client configuration of one profile.
pub fn client_config(files: &TlsFiles) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    match &files.ca_file {
        Some(path) => {
            let certificates = CertificateDer::pem_file_iter(path)
                .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("cannot read CA certificates from {}", path.display()))?;
            anyhow::ensure!(
                !certificates.is_empty(),
                "no certificate in the CA file {}",
                path.display()
            );
            for certificate in certificates {
                roots
                    .add(certificate)
                    .with_context(|| format!("a bad CA certificate in {}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for error in &found.errors {
                tracing::debug!(%error, "a system CA certificate could not be read");
            }
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!("no system CA certificates found: wss:// streams will not verify; install ca-certificates or set ca-file");
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots);
    let config = match (&files.cert_file, &files.key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
                .with_context(|| {
                    format!("cannot read the client certificate {}", cert.display())
                })?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("cannot read the client key {}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .context("the client certificate and key do not go together")?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}
