//! Client certificates for registries (`configs.<host>.tls.cert_file`/`key_file` in
//! registries.yaml). The registry client (`oci-client`) has no client-identity option, so a pull
//! from such a registry goes through a [`Tunnel`]: a small HTTP forward proxy on 127.0.0.1 that the
//! client for that endpoint uses (it speaks plain HTTP to the tunnel), which forwards each request
//! to `https://<host>` presenting the certificate, verifying the server with `ca_file` (or the
//! system roots, or not at all with `insecure_skip_verify`), and streams the answer back.
//!
//! Invariants: the tunnel forwards with the identity only to its one host (requests for other
//! hosts, e.g. a token realm, go out as they came, without it); it answers only requests carrying
//! its random per-tunnel secret (`Proxy-Authorization`), so other local processes cannot borrow
//! the identity; it never follows redirects itself, and rewrites `https://<host>` in `Location`
//! and `WWW-Authenticate` to `http://<host>` so follow-ups come back through it. It lives as long
//! as the cached registry client that uses it (the accept loop is aborted on drop).

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use futures::TryStreamExt as _;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use r3s_config::exit::chain;

use crate::registries::TlsConfig;

/// Why a tunnel could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MtlsError {
    #[error("cert_file and key_file must be given together")]
    Incomplete,
    #[error("read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cert_file/key_file: {0}")]
    Identity(String),
    #[error("ca_file: {0}")]
    Ca(String),
    #[error("client certificates need an https:// endpoint")]
    PlainHttp,
    #[error("client certificates need an async runtime (pull from within tokio)")]
    NoRuntime,
    #[error("tunnel listener: {0}")]
    Listen(std::io::Error),
    #[error("https client: {0}")]
    Client(String),
}

/// A running tunnel for one registry host.
pub(crate) struct Tunnel {
    /// `http://r3s:<secret>@127.0.0.1:<port>`: what the registry client's `http_proxy` is set to.
    pub(crate) proxy_url: String,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

struct State {
    host: String,
    auth: HeaderValue,
    with_identity: reqwest::Client,
    plain: reqwest::Client,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, MtlsError> {
    std::fs::read(path).map_err(|source| MtlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

impl Tunnel {
    /// Starts a tunnel to `https://<host>` with the identity and trust settings of `tls`.
    pub(crate) fn start(host: &str, https: bool, tls: &TlsConfig) -> Result<Self, MtlsError> {
        let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) else {
            return Err(MtlsError::Incomplete);
        };
        if !https {
            return Err(MtlsError::PlainHttp);
        }
        let handle = tokio::runtime::Handle::try_current().map_err(|_| MtlsError::NoRuntime)?;
        let mut pem = read("cert_file", cert)?;
        pem.push(b'\n');
        pem.extend(read("key_file", key)?);
        let identity =
            reqwest::Identity::from_pem(&pem).map_err(|e| MtlsError::Identity(chain(&e)))?;
        let mut builder = reqwest::Client::builder()
            .identity(identity)
            .danger_accept_invalid_certs(tls.insecure_skip_verify)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(std::time::Duration::from_secs(30));
        if let Some(ca) = &tls.ca_file {
            let certs = reqwest::Certificate::from_pem_bundle(&read("ca_file", ca)?)
                .map_err(|e| MtlsError::Ca(chain(&e)))?;
            builder = builder.tls_certs_merge(certs);
        }
        let with_identity = builder.build().map_err(|e| MtlsError::Client(chain(&e)))?;
        let plain = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| MtlsError::Client(chain(&e)))?;

        let secret = crate::digest::Digest::of(&random_seed()).hex()[..32].to_string();
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("r3s:{secret}"));
        let auth = HeaderValue::from_str(&format!("Basic {basic}"))
            .map_err(|e| MtlsError::Client(e.to_string()))?;
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(MtlsError::Listen)?;
        std_listener
            .set_nonblocking(true)
            .map_err(MtlsError::Listen)?;
        let port = std_listener.local_addr().map_err(MtlsError::Listen)?.port();
        let _enter = handle.enter();
        let listener =
            tokio::net::TcpListener::from_std(std_listener).map_err(MtlsError::Listen)?;
        let state = Arc::new(State {
            host: host.to_string(),
            auth,
            with_identity,
            plain,
        });
        let accept = handle.spawn(accept_loop(listener, state));
        Ok(Self {
            proxy_url: format!("http://r3s:{secret}@127.0.0.1:{port}"),
            accept,
        })
    }
}

/// Unpredictable bytes without a RNG dependency: the address of a fresh allocation, the time,
/// the pid and the kernel's boot id / random uuid.
fn random_seed() -> Vec<u8> {
    let mut seed = Vec::new();
    if let Ok(u) = std::fs::read("/proc/sys/kernel/random/uuid") {
        seed.extend(u);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    seed.extend(now.to_le_bytes());
    seed.extend(std::process::id().to_le_bytes());
    let b = Box::new(0u8);
    seed.extend((&*b as *const u8 as usize).to_le_bytes());
    seed
}

async fn accept_loop(listener: tokio::net::TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(req, state.clone()));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, "registry tunnel connection");
            }
        });
    }
}

type Body = BoxBody<Bytes, std::io::Error>;

fn text(status: StatusCode, msg: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(msg)).map_err(|e| match e {}).boxed());
    *r.status_mut() = status;
    r
}

const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip(headers: &mut HeaderMap) {
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
    headers.remove(header::HOST);
}

async fn handle(req: Request<Incoming>, st: Arc<State>) -> Result<Response<Body>, Infallible> {
    if req.headers().get(header::PROXY_AUTHORIZATION) != Some(&st.auth) {
        return Ok(text(
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            "r3s registry tunnel: not authorized".into(),
        ));
    }
    let Some(authority) = req.uri().authority().map(|a| a.as_str().to_string()) else {
        return Ok(text(
            StatusCode::BAD_REQUEST,
            "r3s registry tunnel: absolute URL expected".into(),
        ));
    };
    let pq = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let ours = authority == st.host;
    let (client, url) = if ours {
        (&st.with_identity, format!("https://{authority}{pq}"))
    } else {
        (&st.plain, format!("http://{authority}{pq}"))
    };
    let method = req.method().clone();
    let mut headers = req.headers().clone();
    strip(&mut headers);
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Ok(text(
                StatusCode::BAD_REQUEST,
                format!("r3s registry tunnel: request body: {e}"),
            ));
        }
    };
    let upstream = match client
        .request(method, &url)
        .headers(headers)
        .body(body)
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => {
            return Ok(text(
                StatusCode::BAD_GATEWAY,
                format!("r3s registry tunnel to {url}: {}", chain(&e)),
            ));
        }
    };
    let status = upstream.status();
    let mut headers = upstream.headers().clone();
    strip(&mut headers);
    if ours {
        let from = format!("https://{}", st.host);
        let to = format!("http://{}", st.host);
        for name in [header::LOCATION, header::WWW_AUTHENTICATE] {
            let rewritten: Vec<HeaderValue> = headers
                .get_all(&name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .filter_map(|v| HeaderValue::from_str(&v.replace(&from, &to)).ok())
                .collect();
            if !rewritten.is_empty() {
                headers.remove(&name);
                for v in rewritten {
                    headers.append(&name, v);
                }
            }
        }
    }
    let stream = upstream
        .bytes_stream()
        .map_ok(Frame::data)
        .map_err(std::io::Error::other);
    let mut resp = Response::new(StreamBody::new(stream).boxed());
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    Ok(resp)
}
