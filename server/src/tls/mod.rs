//! TLS for the API server: the on-disk certificate authority and certificates ([`certs`]) and the
//! rustls listener that serves the API over HTTPS with optional client certificates ([`listener`]).
//!
//! Invariants: every certificate and key lives under `<data-dir>/server/tls/` with k3s's file names;
//! keys are written with mode 0600; a restart reuses what is on disk and only re-issues a leaf
//! certificate when it is close to expiry ([`renew`], same CA) or, for the serving certificate, when
//! its SANs no longer cover what was asked for. The CAs are never re-issued.

pub mod certs;
pub mod kubelet;
pub mod listener;
pub mod renew;

pub use certs::{CertOptions, Certificates, ensure_certificates, issue_client_certificate};
pub use listener::{PeerIdentity, serve_tls, server_config};

/// Errors while creating, loading or using TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("generating {what}: {source}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("{path}: not a usable PEM certificate or key: {reason}")]
    Parse { path: String, reason: String },
    #[error("building the TLS configuration: {0}")]
    Config(String),
}
