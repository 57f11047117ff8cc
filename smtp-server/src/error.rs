//! Errors of the server crate.

use std::path::PathBuf;

/// Boxed error of a tower service.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why the server could not start or a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Binding a listener failed.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// A certificate or key file could not be read or parsed.
    #[error("TLS file {path}: {reason}")]
    TlsFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// Generating a certificate failed.
    #[error("certificate generation: {0}")]
    CertGen(String),
    /// An I/O error outside a connection.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The builder is missing something.
    #[error("server configuration: {0}")]
    Config(&'static str),
}
