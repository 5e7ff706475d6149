//! The few HTTPS requests joining needs, before any kubeconfig exists: one GET per connection,
//! over rustls and hyper's HTTP/1.1 client.
//!
//! Two trust modes: [`Trust::Unverified`] accepts any server certificate (only ever used to fetch
//! `/cacerts`, whose hash the caller then checks against the token) and [`Trust::Ca`] verifies the
//! server against the CA bundle just fetched. Invariant: nothing secret is ever sent in the
//! unverified mode (the callers pass no `Authorization` header there).

use std::sync::Arc;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::ServerUrl;

/// Answers larger than this are refused (a CA bundle or a certificate is a few KiB).
const MAX_BODY: usize = 1 << 20;

/// Why a request failed before an HTTP status came back.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot connect to {server}: {source}")]
    Connect {
        server: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS with {server}: {source}")]
    Tls {
        server: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{server}{path}: {reason}")]
    Http {
        server: String,
        path: String,
        reason: String,
    },
    #[error("the CA bundle from {server} holds no usable certificate: {reason}")]
    BadCa { server: String, reason: String },
    #[error("building the TLS client: {0}")]
    Config(String),
}

/// How the server's certificate is checked.
pub enum Trust<'a> {
    /// Not at all: only for fetching the CA bundle that is then checked against the token.
    Unverified,
    /// Against this CA bundle (PEM).
    Ca(&'a [u8]),
}

/// An HTTP answer: status and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as text, trimmed, for error messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).trim().to_owned()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The rustls client configuration for `trust`.
pub fn client_config(server: &ServerUrl, trust: &Trust<'_>) -> Result<ClientConfig, HttpError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpError::Config(e.to_string()))?;
    let config = match trust {
        Trust::Unverified => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
            .with_no_client_auth(),
        Trust::Ca(pem) => {
            let bad = |reason: String| HttpError::BadCa {
                server: server.to_string(),
                reason,
            };
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| bad(e.to_string()))?;
                roots.add(cert).map_err(|e| bad(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(bad("no PEM certificate in it".into()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(config)
}

/// `GET <server><path>` with extra headers, over a fresh connection.
pub async fn get(
    server: &ServerUrl,
    path: &str,
    trust: Trust<'_>,
    headers: &[(&str, String)],
) -> Result<Answer, HttpError> {
    let config = client_config(server, &trust)?;
    let host = server.host().to_string();
    let tcp = tokio::net::TcpStream::connect((host.as_str(), server.port()))
        .await
        .map_err(|source| HttpError::Connect {
            server: server.to_string(),
            source,
        })?;
    let name = ServerName::try_from(host.clone())
        .map_err(|e| HttpError::Config(format!("server name {host}: {e}")))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|source| HttpError::Tls {
            server: server.to_string(),
            source,
        })?;
    let http = |reason: String| HttpError::Http {
        server: server.to_string(),
        path: path.to_owned(),
        reason,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| http(e.to_string()))?;
    let conn = tokio::spawn(conn);
    let authority = server.to_string().trim_start_matches("https://").to_owned();
    let mut request = http::Request::get(path).header(http::header::HOST, authority);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| http(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| http(e.to_string()))?;
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| http(e.to_string()))?
        .to_bytes()
        .to_vec();
    conn.abort();
    Ok(Answer { status, body })
}

/// Accepts any certificate but still checks the handshake signatures, so the session is at least
/// with the holder of the presented key. Used only before anything secret is sent.
#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
