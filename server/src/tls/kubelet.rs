//! Certificates for the API server ↔ kubelet connection: the API server's client certificate
//! towards kubelets (`client-kube-apiserver.{crt,key}` under `<data-dir>/server/tls/`, CN
//! `system:kube-apiserver`, from the client CA, made once and reused) and kubelet serving
//! certificates (from the server CA, SANs = node name and node addresses, one year), which the
//! API server verifies against the server CA when it dials a node.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use chrono::{Datelike, Utc};
use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use super::TlsError;

/// The identity kubelets accept on their API.
pub const APISERVER_KUBELET_CLIENT_USER: &str = "system:kube-apiserver";

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Io {
        path: path.display().to_string(),
        source,
    })
}

fn write(path: &Path, data: &str, mode: u32) -> Result<(), TlsError> {
    let io = |source| TlsError::Io {
        path: path.display().to_string(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(data.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Loads the API server's kubelet client certificate and key, creating them on first use.
pub fn ensure_kubelet_client(data_dir: &Path) -> Result<(String, String), TlsError> {
    let dir = data_dir.join("server").join("tls");
    let crt = dir.join("client-kube-apiserver.crt");
    let key = dir.join("client-kube-apiserver.key");
    if !(crt.exists() && key.exists()) {
        let (cert_pem, key_pem) = super::issue_client_certificate(
            data_dir,
            APISERVER_KUBELET_CLIENT_USER,
            &["system:masters"],
        )?;
        // Key first: a crash between the two writes leaves no certificate without its key.
        write(&key, &key_pem, 0o600)?;
        write(&crt, &cert_pem, 0o644)?;
    }
    Ok((read(&crt)?, read(&key)?))
}

/// Issues a kubelet serving certificate for `node` and its addresses, signed by the server CA.
/// Nothing is written.
pub fn issue_kubelet_serving(
    data_dir: &Path,
    node: &str,
    ips: &[IpAddr],
) -> Result<(String, String), TlsError> {
    let dir = data_dir.join("server").join("tls");
    let ca_pem = read(&dir.join("server-ca.crt"))?;
    let ca_key = read(&dir.join("server-ca.key"))?;
    let parse = |reason: rcgen::Error| TlsError::Parse {
        path: dir.join("server-ca").display().to_string(),
        reason: reason.to_string(),
    };
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, KeyPair::from_pem(&ca_key).map_err(parse)?)
        .map_err(parse)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, node);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let mut sans = Vec::new();
    if let Ok(name) = node.to_owned().try_into() {
        sans.push(SanType::DnsName(name));
    }
    for ip in ips {
        sans.push(SanType::IpAddress(*ip));
    }
    params.subject_alt_names = sans;
    // Backdated an hour for clocks slightly behind; one year, like the other leaf certificates.
    let from = Utc::now() - chrono::Duration::hours(1);
    let to = from + chrono::Duration::days(365);
    params.not_before = rcgen::date_time_ymd(from.year(), from.month() as u8, from.day() as u8);
    params.not_after = rcgen::date_time_ymd(to.year(), to.month() as u8, to.day() as u8);
    let key = KeyPair::generate().map_err(|source| TlsError::Generate {
        what: "kubelet serving key",
        source,
    })?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|source| TlsError::Generate {
            what: "kubelet serving certificate",
            source,
        })?;
    Ok((cert.pem(), key.serialize_pem()))
}
