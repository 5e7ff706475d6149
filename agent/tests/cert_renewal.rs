//! The node's certificates are renewed while the agent runs (`r3s_agent::join::renew`), with
//! short-lived certificates so several renewals happen within the test.
//!
//! Client side: the node's `kube::Client` (`join::client::renewable_client`) talks to a real TLS
//! server that requires a client certificate from the test's CA and rejects expired ones (rustls'
//! WebPKI verifier); the server closes every connection after one answer, so each request is a
//! new handshake. Over three lifetimes every request succeeds and the server sees several
//! different client certificates, each presented before it expired. Serving side: a TLS listener
//! whose certificate comes from a `CertSlot` renewed the same way; clients verifying it against
//! the CA see a new certificate each lifetime and never an expired one.
//!
//! The issuer here is the test's own rcgen CA, standing in for the server's
//! `/v1-r3s/client-kubelet.crt` endpoint only because that one issues one-year certificates.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use r3s_agent::join::client::renewable_client;
use r3s_agent::join::renew::{AbortOnDrop, CertSlot, keep_renewed};
use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use x509_parser::prelude::FromDer;

/// Lifetime of the short-lived leaves: renewal at two thirds leaves a third as margin.
const LIFETIME: Duration = Duration::from_secs(9);

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn asn1(t: SystemTime) -> x509_parser::time::ASN1Time {
    let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    x509_parser::time::ASN1Time::from_timestamp(secs).unwrap()
}

fn ca() -> Ca {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "r3st-renew-ca");
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A leaf valid from now for `lifetime`: `(certificate PEM, key PEM)`.
fn leaf(ca: &Ca, cn: &str, usage: ExtendedKeyUsagePurpose, lifetime: Duration) -> (String, String) {
    let mut params = CertificateParams::new(vec!["localhost".into()]).unwrap();
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![usage];
    let now = SystemTime::now();
    params.not_before = asn1(now).to_datetime();
    params.not_after = asn1(now + lifetime).to_datetime();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn serial_and_expiry(der: &[u8]) -> (String, i64) {
    let (_, c) = x509_parser::certificate::X509Certificate::from_der(der).unwrap();
    (c.raw_serial_as_string(), c.validity().not_after.timestamp())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn roots(ca: &Ca) -> Arc<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    Arc::new(roots)
}

/// A TLS server requiring client certificates from `ca`: answers kube's `/version` and closes
/// the connection, recording (serial, not_after, handshake time) of each client certificate.
async fn apiserver(ca: &Ca) -> (SocketAddr, Arc<Mutex<Vec<(String, i64, i64)>>>, AbortOnDrop) {
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(ca), provider())
            .build()
            .unwrap();
    let (cert, key) = leaf(
        ca,
        "r3st-apiserver",
        ExtendedKeyUsagePurpose::ServerAuth,
        Duration::from_secs(3600),
    );
    let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            chain,
            PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let log = log.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if let Some(cert) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                    let (serial, not_after) = serial_and_expiry(cert.as_ref());
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap()
                        .as_secs() as i64;
                    log.lock().unwrap().push((serial, not_after, now));
                }
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(
                        http::Response::builder()
                            .header("content-type", "application/json")
                            .header("connection", "close")
                            .body(http_body_util::Full::new(hyper::body::Bytes::from_static(
                                br#"{"major":"1","minor":"32","gitVersion":"v1.32.0-r3st","gitCommit":"","gitTreeState":"","buildDate":"","goVersion":"","compiler":"","platform":"linux/amd64"}"#,
                            )))
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, seen, AbortOnDrop(task))
}

#[tokio::test]
async fn client_certificate_is_renewed_while_the_client_runs() {
    let ca = Arc::new(ca());
    let (addr, seen, _server) = apiserver(&ca).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubelet.kubeconfig");
    let (cert, key) = leaf(
        &ca,
        "system:node:r3st",
        ExtendedKeyUsagePurpose::ClientAuth,
        LIFETIME,
    );
    std::fs::write(
        &kubeconfig,
        r3s_agent::join::render_kubeconfig(&format!("https://{addr}"), &ca.pem, &cert, &key),
    )
    .unwrap();
    let slot = Arc::new(CertSlot::new("client", &cert, &key).unwrap());
    let client = renewable_client(&kubeconfig, slot.clone()).await.unwrap();
    let renewals = Arc::new(AtomicUsize::new(0));
    let (issuer, counter) = (ca.clone(), renewals.clone());
    let _renewal = AbortOnDrop(tokio::spawn(keep_renewed(
        slot.clone(),
        move || {
            let issuer = issuer.clone();
            async move {
                Ok(leaf(
                    &issuer,
                    "system:node:r3st",
                    ExtendedKeyUsagePurpose::ClientAuth,
                    LIFETIME,
                ))
            }
        },
        move |_, _| {
            counter.fetch_add(1, Ordering::SeqCst);
        },
    )));

    // Three lifetimes: without renewal the first certificate expires after one and every
    // request after that fails the handshake.
    let until = tokio::time::Instant::now() + LIFETIME * 3;
    let mut requests = 0;
    while tokio::time::Instant::now() < until {
        let version = client
            .apiserver_version()
            .await
            .unwrap_or_else(|e| panic!("request {requests} failed: {e}"));
        assert_eq!(version.git_version, "v1.32.0-r3st");
        requests += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let seen = seen.lock().unwrap().clone();
    let serials: BTreeSet<&String> = seen.iter().map(|(s, _, _)| s).collect();
    assert!(
        serials.len() >= 3,
        "client certificates seen: {serials:?} over {requests} requests"
    );
    for (serial, not_after, at) in &seen {
        assert!(
            at <= not_after,
            "certificate {serial} presented at {at}, after it expired at {not_after}"
        );
    }
    assert!(renewals.load(Ordering::SeqCst) >= 2);
    assert!(
        slot.not_after() > SystemTime::now(),
        "the certificate in use is valid"
    );
}

#[tokio::test]
async fn serving_certificate_is_renewed_while_serving() {
    let ca = Arc::new(ca());
    let (cert, key) = leaf(
        &ca,
        "r3st-kubelet",
        ExtendedKeyUsagePurpose::ServerAuth,
        LIFETIME,
    );
    let slot = Arc::new(CertSlot::new("serving", &cert, &key).unwrap());
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(slot.clone());
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _server = AbortOnDrop(tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(tcp).await;
            });
        }
    }));
    let issuer = ca.clone();
    let _renewal = AbortOnDrop(tokio::spawn(keep_renewed(
        slot,
        move || {
            let issuer = issuer.clone();
            async move {
                Ok(leaf(
                    &issuer,
                    "r3st-kubelet",
                    ExtendedKeyUsagePurpose::ServerAuth,
                    LIFETIME,
                ))
            }
        },
        |_, _| {},
    )));

    // The client verifies the chain and the expiry (rustls' WebPKI verifier) at each handshake.
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(&ca))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let mut serials = BTreeSet::new();
    let until = tokio::time::Instant::now() + LIFETIME * 3;
    while tokio::time::Instant::now() < until {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let tls = connector
            .connect(name, tcp)
            .await
            .unwrap_or_else(|e| panic!("handshake after {} certificates: {e}", serials.len()));
        let cert = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        serials.insert(serial_and_expiry(cert.as_ref()).0);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(serials.len() >= 3, "serving certificates seen: {serials:?}");
}
