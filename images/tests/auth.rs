//! Registry auth against a real `docker-registry`: basic auth over TLS with a test CA (registries.yaml
//! `configs` with `ca_file` and `auth`), and the bearer-token flow with a small token server in the
//! test (the registry validates ES256 tokens against the test's certificate; it issues none).
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use r3s_images::{
    ImageService, ImageServiceConfig, Keyring, Platform, PullOptions, RegistriesConfig,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use support::*;

struct Ca {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

/// A CA and a server certificate for 127.0.0.1 signed by it.
fn test_ca() -> Ca {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "r3s test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    let cert = params.signed_by(&key, &issuer).unwrap();
    Ca {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

fn service_default_endpoint(dir: &std::path::Path, yaml: &str) -> ImageService {
    let mut cfg = ImageServiceConfig::new(dir.join("store"));
    cfg.registries = RegistriesConfig::from_yaml(yaml).unwrap();
    cfg.platform = Platform::parse("linux/amd64").unwrap();
    ImageService::open(cfg).unwrap()
}

#[tokio::test]
async fn basic_auth_over_tls_with_test_ca() {
    if !have_registry()
        || !have_root()
        || !require(
            "htpasswd (apache2-utils)",
            std::path::Path::new("/usr/bin/htpasswd").exists(),
        )
    {
        return;
    }
    let ca = test_ca();
    let reg = Registry::start_with(RegistryOpts {
        basic: Some(("r3s".into(), "tls-pass".into())),
        tls: Some((ca.cert_pem.clone(), ca.key_pem.clone())),
        ..Default::default()
    });
    let img = image(
        vec![marker_layer("t", "tls", Compression::Gzip)],
        "amd64",
        None,
        false,
    );
    reg.push(
        "secure",
        "1",
        &img,
        &RegistryAuth::Basic("r3s".into(), "tls-pass".into()),
    )
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let ca_file = tmp.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    let name = format!("{}/secure:1", reg.addr);

    // No CA configured: the server certificate is not trusted.
    let svc = service_default_endpoint(&tmp.path().join("a"), "");
    let err = svc
        .pull(&name, &PullOptions::default())
        .await
        .unwrap_err()
        .to_string();
    eprintln!("untrusted CA error: {err}");
    assert!(err.contains(&format!("https://{}/v2", reg.addr)), "{err}");

    // CA and credentials from registries.yaml (default endpoint: https://<registry>).
    let yaml = format!(
        "configs:\n  \"{}\":\n    auth:\n      username: r3s\n      password: tls-pass\n    tls:\n      ca_file: {}\n",
        reg.addr,
        ca_file.display()
    );
    let svc = service_default_endpoint(&tmp.path().join("b"), &yaml);
    let rec = svc.pull(&name, &PullOptions::default()).await.unwrap();
    assert_eq!(rec.manifest.as_str(), img.manifest_digest);

    // Wrong password: the registry's refusal is reported.
    let yaml_bad = yaml.replace("tls-pass", "wrong");
    let svc = service_default_endpoint(&tmp.path().join("c"), &yaml_bad);
    let err = svc
        .pull(&name, &PullOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.to_lowercase().contains("not authorized") || err.contains("401"),
        "{err}"
    );

    // insecure_skip_verify plus pull-secret credentials.
    let yaml_insecure = format!(
        "configs:\n  \"{}\":\n    tls:\n      insecure_skip_verify: true\n",
        reg.addr
    );
    let svc = service_default_endpoint(&tmp.path().join("d"), &yaml_insecure);
    let json = format!(
        r#"{{"auths":{{"https://{}":{{"auth":"{}"}}}}}}"#,
        reg.addr,
        b64("r3s:tls-pass")
    );
    let keyring = Keyring::from_docker_configs([json.as_bytes()]).unwrap();
    svc.pull(
        &name,
        &PullOptions {
            keyring,
            ..Default::default()
        },
    )
    .await
    .unwrap();
}

/// A client CA and a client certificate (ClientAuth) signed by it: (ca pem, cert pem, key pem).
fn client_identity(cn: &str) -> (String, String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{cn} client CA"));
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

#[tokio::test]
async fn client_certificates_from_registries_yaml() {
    if !have_registry() || !have_root() {
        return;
    }
    // The image goes in through a plain registry; a second one serves the same storage over
    // TLS and demands client certificates (http.tls.clientcas).
    let plain = Registry::start();
    let img = image(
        vec![marker_layer("m", "mtls", Compression::Gzip)],
        "amd64",
        None,
        false,
    );
    plain
        .push("mtls", "1", &img, &RegistryAuth::Anonymous)
        .await;
    let ca = test_ca();
    let (client_ca, cert, key) = client_identity("r3s-node");
    let (_, other_cert, other_key) = client_identity("stranger");
    let reg = Registry::start_with(RegistryOpts {
        tls: Some((ca.cert_pem.clone(), ca.key_pem.clone())),
        client_ca: Some(client_ca),
        storage: Some(plain.dir.path().join("data")),
        ..Default::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    let file = |name: &str, pem: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, pem).unwrap();
        p.display().to_string()
    };
    let (ca_file, cert_file, key_file) = (
        file("ca.pem", &ca.ca_pem),
        file("node.pem", &cert),
        file("node.key", &key),
    );
    let (other_cert, other_key) = (
        file("other.pem", &other_cert),
        file("other.key", &other_key),
    );
    let name = format!("{}/mtls:1", reg.addr);
    let yaml = |tls: &str| format!("configs:\n  \"{}\":\n    tls:\n{tls}", reg.addr);

    // Server trusted, but no client certificate: the registry ends the handshake.
    let svc = service_default_endpoint(
        &tmp.path().join("a"),
        &yaml(&format!("      ca_file: {ca_file}\n")),
    );
    let err = svc
        .pull(&name, &PullOptions::default())
        .await
        .unwrap_err()
        .to_string();
    eprintln!("without a client certificate: {err}");
    assert!(err.contains(&format!("https://{}/v2", reg.addr)), "{err}");

    // cert_file/key_file from registries.yaml: the pull works, layers unpacked.
    let svc = service_default_endpoint(
        &tmp.path().join("b"),
        &yaml(&format!(
            "      ca_file: {ca_file}\n      cert_file: {cert_file}\n      key_file: {key_file}\n"
        )),
    );
    let rec = svc.pull(&name, &PullOptions::default()).await.unwrap();
    assert_eq!(rec.manifest.as_str(), img.manifest_digest);
    let top = svc
        .root()
        .join("snapshots")
        .join(rec.layers[0].diff_id.hex());
    assert_eq!(std::fs::read_to_string(top.join("etc/m")).unwrap(), "mtls");
    // A second pull reuses the cached client and its tunnel.
    svc.pull(&name, &PullOptions::default()).await.unwrap();

    // A certificate from a CA the registry does not trust is refused.
    let svc = service_default_endpoint(
        &tmp.path().join("c"),
        &yaml(&format!(
            "      ca_file: {ca_file}\n      cert_file: {other_cert}\n      key_file: {other_key}\n"
        )),
    );
    let err = svc
        .pull(&name, &PullOptions::default())
        .await
        .unwrap_err()
        .to_string();
    eprintln!("untrusted client certificate: {err}");
    assert!(err.contains(&reg.addr), "{err}");

    // Configuration mistakes are named.
    let svc = service_default_endpoint(
        &tmp.path().join("d"),
        &yaml(&format!("      cert_file: {cert_file}\n")),
    );
    let err = svc
        .pull(&name, &PullOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("cert_file and key_file"), "{err}");
    let svc = service_default_endpoint(
        &tmp.path().join("e"),
        &yaml("      cert_file: /nonexistent.pem\n      key_file: /nonexistent.key\n"),
    );
    let err = svc
        .pull(&name, &PullOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent.pem"), "{err}");
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// ECDSA DER signature → JOSE r||s (32 bytes each).
fn der_to_jose(der: &[u8]) -> Vec<u8> {
    fn int(b: &[u8]) -> (&[u8], &[u8]) {
        assert_eq!(b[0], 0x02);
        let len = b[1] as usize;
        (&b[2..2 + len], &b[2 + len..])
    }
    assert_eq!(der[0], 0x30);
    let body = &der[2..];
    let (r, rest) = int(body);
    let (s, _) = int(rest);
    let mut out = Vec::new();
    for x in [r, s] {
        let x = if x.len() > 32 { &x[x.len() - 32..] } else { x };
        out.extend(std::iter::repeat_n(0u8, 32 - x.len()));
        out.extend_from_slice(x);
    }
    out
}

/// A token server: `GET /token?service=..&scope=..` with Basic `user:pass` → an ES256 JWT that
/// grants the requested scopes. Stops (by flag + wake-up connection) on drop.
struct TokenServer {
    addr: String,
    issued: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TokenServer {
    fn start(key: KeyPair, cert_der: Vec<u8>, user: &str, pass: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let issued = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let expected = format!("Basic {}", b64(&format!("{user}:{pass}")));
        let (issued2, stop2) = (issued.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let req = String::from_utf8_lossy(&buf).into_owned();
                let authorized = req.lines().any(|l| {
                    l.split_once(':').is_some_and(|(k, v)| {
                        k.eq_ignore_ascii_case("authorization") && v.trim() == expected
                    })
                });
                let target = req.split_whitespace().nth(1).unwrap_or("").to_string();
                let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
                let mut access = Vec::new();
                for kv in query.split('&') {
                    if let Some(scope) = kv.strip_prefix("scope=") {
                        let scope = scope
                            .replace("%3A", ":")
                            .replace("%2C", ",")
                            .replace("%2F", "/");
                        let parts: Vec<&str> = scope.split(':').collect();
                        if parts.len() == 3 {
                            let actions: Vec<&str> = parts[2].split(',').collect();
                            access.push(serde_json::json!({"type": parts[0], "name": parts[1], "actions": actions}));
                        }
                    }
                }
                let resp = if authorized {
                    issued2.fetch_add(1, Ordering::SeqCst);
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_secs();
                    let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "x5c": [base64::engine::general_purpose::STANDARD.encode(&cert_der)]});
                    let claims = serde_json::json!({"iss": "r3s-test-issuer", "sub": "r3s", "aud": "r3s-test-registry",
                        "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("t{now}"), "access": access});
                    let signing_input = format!(
                        "{}.{}",
                        b64url(&serde_json::to_vec(&header).unwrap()),
                        b64url(&serde_json::to_vec(&claims).unwrap())
                    );
                    let sig = rcgen::SigningKey::sign(&key, signing_input.as_bytes()).unwrap();
                    let jwt = format!("{signing_input}.{}", b64url(&der_to_jose(&sig)));
                    let body =
                        serde_json::json!({"token": jwt, "access_token": jwt, "expires_in": 300})
                            .to_string();
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_string()
                };
                let _ = conn.write_all(resp.as_bytes());
            }
        });
        TokenServer {
            addr,
            issued,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[tokio::test]
async fn bearer_token_flow_with_test_token_server() {
    if !have_registry() || !have_root() {
        return;
    }
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "r3s token signer");
    let cert = params.self_signed(&key).unwrap();
    let cert_pem = cert.pem();
    let cert_der = cert.der().to_vec();
    let tokens = TokenServer::start(key, cert_der, "tok", "tok-pass");

    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("token-ca.pem");
    std::fs::write(&bundle, &cert_pem).unwrap();
    let reg = Registry::start_with_extra(&format!(
        "auth:\n  token:\n    realm: http://{}/token\n    service: r3s-test-registry\n    issuer: r3s-test-issuer\n    rootcertbundle: {}\n",
        tokens.addr,
        bundle.display()
    ));
    let img = image(
        vec![marker_layer("b", "bearer", Compression::Gzip)],
        "amd64",
        None,
        false,
    );
    reg.push(
        "tokened/app",
        "1",
        &img,
        &RegistryAuth::Basic("tok".into(), "tok-pass".into()),
    )
    .await;
    let name = format!("{}/tokened/app:1", reg.addr);

    // Anonymous: the token server refuses, the pull fails.
    let svc = service(&tmp.path().join("a"), &reg, "linux/amd64");
    let err = svc
        .pull(&name, &PullOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&reg.addr), "{err}");

    // Pull-secret credentials go to the token server; the registry accepts the bearer token.
    let before = tokens.issued.load(Ordering::SeqCst);
    let json = format!(
        r#"{{"auths":{{"{}":{{"username":"tok","password":"tok-pass"}}}}}}"#,
        reg.addr
    );
    let keyring = Keyring::from_docker_configs([json.as_bytes()]).unwrap();
    let rec = svc
        .pull(
            &name,
            &PullOptions {
                keyring,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(rec.manifest.as_str(), img.manifest_digest);
    assert!(
        tokens.issued.load(Ordering::SeqCst) > before,
        "a token was issued for the pull"
    );
}
