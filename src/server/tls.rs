//! TLS: the rustls server configuration (TLS 1.2 + 1.3, ALPN h2 + http/1.1) and dev certificates.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;

/// The process-wide crypto provider: aws-lc-rs, for rustls and jsonwebtoken alike.
pub fn install_crypto_provider() {
    // Err only means another part of the process installed it first; same provider either way.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// When the first certificate in the PEM file `cert` expires (unix seconds); `None` when it
/// cannot be read (the TLS set-up itself reports that).
pub fn certificate_not_after(cert: &std::path::Path) -> Option<i64> {
    let der = CertificateDer::pem_file_iter(cert).ok()?.next()?.ok()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).ok()?;
    Some(parsed.validity().not_after.timestamp())
}

/// Loads certificate and key once and builds the server configuration.
pub fn server_config(t: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&t.cert)
        .map_err(|e| format!("cert: cannot read {}: {e}", t.cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cert: bad PEM in {}: {e}", t.cert.display()))?;
    if certs.is_empty() {
        return Err(format!("cert: no certificate in {}", t.cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(&t.key)
        .map_err(|e| format!("key: no usable private key in {}: {e}", t.key.display()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("cert/key: {e}"))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Writes a self-signed development certificate and key for `names` (dev only: never deploy).
pub fn generate_dev_cert(
    cert_path: &Path,
    key_path: &Path,
    names: &[String],
) -> Result<(), String> {
    let ck = rcgen::generate_simple_self_signed(names.to_vec()).map_err(|e| e.to_string())?;
    std::fs::write(cert_path, ck.cert.pem())
        .map_err(|e| format!("{}: {e}", cert_path.display()))?;
    write_private(key_path, ck.signing_key.serialize_pem().as_bytes())?;
    Ok(())
}

/// Writes a private file (0600 on Unix).
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(data)
        .map_err(|e| format!("{}: {e}", path.display()))
}
