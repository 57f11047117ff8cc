//! TLS for the server: rustls with TLS 1.3 preferred, TLS 1.2 only with ECDHE + AEAD suites,
//! nothing older, stateless session tickets for resumption, and no 0-RTT.
//!
//! Early data (0-RTT) stays off: pipelined SMTP commands sent as early data could be replayed by
//! an attacker, and SMTP gains little from saving one round trip.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::aws_lc_rs;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
pub use smtp_proto::tls_policy::{provider, TlsInfo};

use crate::error::Error;

/// Builds the rustls server configuration from a certificate chain and key.
pub fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, Error> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    // Resumption: stateless tickets for TLS 1.3 (and 1.2), so repeated clients skip the full
    // handshake. 0-RTT stays off (max_early_data_size is 0 by default): replayable commands.
    config.ticketer = aws_lc_rs::Ticketer::new()?;
    config.max_early_data_size = 0;
    Ok(Arc::new(config))
}

/// Loads a certificate chain and private key from PEM files.
pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, Error> {
    let tls_err = |path: &Path, e: &dyn std::fmt::Display| Error::TlsFile { path: path.into(), reason: e.to_string() };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| tls_err(cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls_err(cert, &e))?;
    if certs.is_empty() {
        return Err(Error::TlsFile { path: cert.into(), reason: "no certificate found".into() });
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| tls_err(key, &e))?;
    server_config(certs, key_der)
}

/// Uses `DIR/cert.pem` and `DIR/key.pem`, generating a self-signed certificate for `hostname`
/// there on first use (key file mode 0600), so restarts keep the same certificate.
pub fn self_signed(dir: &Path, hostname: &str) -> Result<Arc<ServerConfig>, Error> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if !cert.exists() || !key.exists() {
        std::fs::create_dir_all(dir)?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        // Loopback names and addresses too, so local clients that verify can trust this file.
        let names = vec![hostname.to_string(), "localhost".into(), "127.0.0.1".into(), "::1".into()];
        let ck = rcgen::generate_simple_self_signed(names).map_err(|e| Error::CertGen(e.to_string()))?;
        write_private(&key, ck.key_pair.serialize_pem().as_bytes())?;
        write_private(&cert, ck.cert.pem().as_bytes())?;
    }
    from_pem_files(&cert, &key)
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
