//! The cluster's certificate material, created on first start and reused afterwards.
//!
//! Layout under `<data-dir>/server/tls/` (k3s's names): `server-ca.{crt,key}` signs the serving
//! certificate, `client-ca.{crt,key}` signs client certificates (the admin's, later the nodes'),
//! `serving-kube-apiserver.{crt,key}` is what HTTPS presents, `client-admin.{crt,key}` is the admin
//! identity (CN=system:admin, O=system:masters) for the kubeconfig, and `service.key` signs
//! ServiceAccount tokens. CAs live ten years, leaf certificates one year; the serving certificate is
//! re-issued (same CA) when its SANs do not cover the requested names or fewer than 90 days remain,
//! so adding a `--tls-san` takes effect on the next start without invalidating any kubeconfig.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chrono::Utc;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use x509_parser::extensions::GeneralName;

use super::TlsError;

/// What the certificates must cover.
#[derive(Clone, Debug)]
pub struct CertOptions {
    /// Extra SANs: the node IP and hostname and every `--tls-san` (IPs or DNS names).
    pub extra_sans: Vec<String>,
    /// The cluster DNS domain (`cluster.local`), for `kubernetes.default.svc.<domain>`.
    pub cluster_domain: String,
    /// The first address of the service CIDR (the `kubernetes` Service's ClusterIP).
    pub service_ip: IpAddr,
}

impl CertOptions {
    /// Every SAN the serving certificate must carry, deduplicated, in a stable order.
    pub fn serving_sans(&self) -> Vec<String> {
        let mut sans = vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
            "kubernetes".to_string(),
            "kubernetes.default".to_string(),
            "kubernetes.default.svc".to_string(),
            format!("kubernetes.default.svc.{}", self.cluster_domain),
            self.service_ip.to_string(),
        ];
        for san in &self.extra_sans {
            if !san.is_empty() && !sans.contains(san) {
                sans.push(san.clone());
            }
        }
        sans
    }
}

/// The PEM material the API server and the kubeconfig need.
#[derive(Clone, Debug)]
pub struct Certificates {
    pub dir: PathBuf,
    pub server_ca_pem: String,
    pub client_ca_pem: String,
    pub serving_cert_pem: String,
    pub serving_key_pem: String,
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
    pub service_account_key_pem: String,
}

/// Creates whatever is missing under `<data_dir>/server/tls/` and loads everything.
pub fn ensure_certificates(data_dir: &Path, opts: &CertOptions) -> Result<Certificates, TlsError> {
    let dir = data_dir.join("server").join("tls");
    fs::create_dir_all(&dir).map_err(|source| io_err(&dir, source))?;

    let (server_ca_pem, server_ca_key) = ensure_ca(&dir, "server-ca", "r3s-server-ca")?;
    let (client_ca_pem, client_ca_key) = ensure_ca(&dir, "client-ca", "r3s-client-ca")?;
    // Leaves close to expiry first (same CA, same names), then whatever is missing or no longer
    // covers the requested SANs.
    super::renew::renew_expiring(&dir)?;

    let sans = opts.serving_sans();
    let serving = dir.join("serving-kube-apiserver.crt");
    if !serving_cert_is_usable(&serving, &sans)? {
        let issuer = load_issuer(&dir, "server-ca", &server_ca_pem, &server_ca_key)?;
        let mut params = leaf_params("kube-apiserver", &[], ExtendedKeyUsagePurpose::ServerAuth);
        params.subject_alt_names = sans_from(&sans)?;
        issue_leaf(&dir, "serving-kube-apiserver", &params, &issuer)?;
    }
    if !dir.join("client-admin.crt").exists() {
        let issuer = load_issuer(&dir, "client-ca", &client_ca_pem, &client_ca_key)?;
        let params = leaf_params(
            "system:admin",
            &["system:masters"],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        issue_leaf(&dir, "client-admin", &params, &issuer)?;
    }
    let sa_key = dir.join("service.key");
    if !sa_key.exists() {
        let key = KeyPair::generate().map_err(|source| TlsError::Generate {
            what: "service-account key",
            source,
        })?;
        write_file(&sa_key, key.serialize_pem().as_bytes(), 0o600)?;
    }

    Ok(Certificates {
        server_ca_pem,
        client_ca_pem,
        serving_cert_pem: read(&serving)?,
        serving_key_pem: read(&dir.join("serving-kube-apiserver.key"))?,
        admin_cert_pem: read(&dir.join("client-admin.crt"))?,
        admin_key_pem: read(&dir.join("client-admin.key"))?,
        service_account_key_pem: read(&sa_key)?,
        dir,
    })
}

/// Issues a new client certificate (CN = user, O = groups) signed by the client CA under
/// `<data_dir>/server/tls/`, returning `(certificate PEM, key PEM)`. Nothing is written.
pub fn issue_client_certificate(
    data_dir: &Path,
    user: &str,
    groups: &[&str],
) -> Result<(String, String), TlsError> {
    let dir = data_dir.join("server").join("tls");
    let ca_pem = read(&dir.join("client-ca.crt"))?;
    let ca_key = read(&dir.join("client-ca.key"))?;
    let issuer = load_issuer(&dir, "client-ca", &ca_pem, &ca_key)?;
    let params = leaf_params(user, groups, ExtendedKeyUsagePurpose::ClientAuth);
    let key_pair = KeyPair::generate().map_err(|source| TlsError::Generate {
        what: "client key",
        source,
    })?;
    let cert = params
        .signed_by(&key_pair, &issuer)
        .map_err(|source| TlsError::Generate {
            what: "client certificate",
            source,
        })?;
    Ok((cert.pem(), key_pair.serialize_pem()))
}

/// The CAs' file stems; every other `<name>.crt` they signed is a leaf ([`super::renew`]).
pub(crate) const CAS: [&str; 2] = ["server-ca", "client-ca"];

/// Loads `<name>.crt`/`<name>.key`, creating a self-signed CA first if either is missing.
fn ensure_ca(dir: &Path, name: &str, common_name: &str) -> Result<(String, String), TlsError> {
    let crt = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    if !(crt.exists() && key.exists()) {
        let key_pair = KeyPair::generate().map_err(|source| TlsError::Generate {
            what: "CA key",
            source,
        })?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            format!("{common_name}@{}", Utc::now().timestamp()),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, 3650)?;
        let cert = params
            .self_signed(&key_pair)
            .map_err(|source| TlsError::Generate { what: "CA", source })?;
        // Key first: a crash between the two writes leaves no certificate without its key.
        write_file(&key, key_pair.serialize_pem().as_bytes(), 0o600)?;
        write_file(&crt, cert.pem().as_bytes(), 0o644)?;
    }
    Ok((read(&crt)?, read(&key)?))
}

pub(crate) fn load_issuer(
    dir: &Path,
    name: &str,
    ca_pem: &str,
    key_pem: &str,
) -> Result<Issuer<'static, KeyPair>, TlsError> {
    let parse = |reason: rcgen::Error| TlsError::Parse {
        path: dir.join(name).display().to_string(),
        reason: reason.to_string(),
    };
    let key = KeyPair::from_pem(key_pem).map_err(parse)?;
    Issuer::from_ca_cert_pem(ca_pem, key).map_err(parse)
}

fn leaf_params(cn: &str, orgs: &[&str], usage: ExtendedKeyUsagePurpose) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    for org in orgs {
        params
            .distinguished_name
            .push(DnType::OrganizationName, *org);
    }
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    // Only fails for a clock beyond the year 9999.
    if set_validity(&mut params, 365).is_err() {
        params.not_after = rcgen::date_time_ymd(9999, 12, 31);
    }
    params
}

pub(crate) fn issue_leaf(
    dir: &Path,
    name: &str,
    params: &CertificateParams,
    issuer: &Issuer<'_, KeyPair>,
) -> Result<(), TlsError> {
    let key_pair = KeyPair::generate().map_err(|source| TlsError::Generate {
        what: "leaf key",
        source,
    })?;
    let cert = params
        .signed_by(&key_pair, issuer)
        .map_err(|source| TlsError::Generate {
            what: "leaf certificate",
            source,
        })?;
    write_file(
        &dir.join(format!("{name}.key")),
        key_pair.serialize_pem().as_bytes(),
        0o600,
    )?;
    write_file(
        &dir.join(format!("{name}.crt")),
        cert.pem().as_bytes(),
        0o644,
    )
}

fn set_validity(params: &mut CertificateParams, days: u64) -> Result<(), TlsError> {
    set_validity_for(params, std::time::Duration::from_secs(days * 24 * 3600))
}

/// Valid from an hour ago (so a node whose clock is slightly behind still accepts it) until
/// `validity` from now.
pub(crate) fn set_validity_for(
    params: &mut CertificateParams,
    validity: std::time::Duration,
) -> Result<(), TlsError> {
    let now = Utc::now().timestamp();
    let secs = i64::try_from(validity.as_secs()).unwrap_or(i64::MAX / 2);
    let at = |t: i64| {
        x509_parser::time::ASN1Time::from_timestamp(t)
            .map(|t| t.to_datetime())
            .map_err(|e| TlsError::Config(format!("certificate validity: {e}")))
    };
    params.not_before = at(now - 3600)?;
    params.not_after = at(now.saturating_add(secs))?;
    Ok(())
}

fn sans_from(names: &[String]) -> Result<Vec<SanType>, TlsError> {
    names
        .iter()
        .map(|name| match name.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => name
                .clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(|source| TlsError::Generate {
                    what: "serving certificate SAN",
                    source,
                }),
        })
        .collect()
}

/// True if the serving certificate exists, covers every SAN in `wanted` and has 90+ days left.
fn serving_cert_is_usable(path: &Path, wanted: &[String]) -> Result<bool, TlsError> {
    if !path.exists() {
        return Ok(false);
    }
    let pem_text = read(path)?;
    let parse_err = |reason: String| TlsError::Parse {
        path: path.display().to_string(),
        reason,
    };
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes())
        .map_err(|e| parse_err(e.to_string()))?;
    let cert = pem.parse_x509().map_err(|e| parse_err(e.to_string()))?;
    let remaining = cert.validity().time_to_expiration();
    if remaining.is_none_or(|left| left.whole_days() < 90) {
        return Ok(false);
    }
    let mut present: Vec<String> = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(dns) => present.push((*dns).to_string()),
                GeneralName::IPAddress(bytes) => {
                    if let Some(ip) = ip_from_bytes(bytes) {
                        present.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    Ok(wanted.iter().all(|w| present.contains(w)))
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

pub(crate) fn read(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(|source| io_err(path, source))
}

/// Writes atomically (temporary file + rename) with the given mode, so a crash never leaves a
/// half-written key behind.
pub(crate) fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|source| io_err(&tmp, source))?;
    file.write_all(data)
        .and_then(|()| file.sync_all())
        .map_err(|source| io_err(&tmp, source))?;
    fs::rename(&tmp, path).map_err(|source| io_err(path, source))
}

fn io_err(path: &Path, source: std::io::Error) -> TlsError {
    TlsError::Io {
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(extra: &[&str]) -> CertOptions {
        CertOptions {
            extra_sans: extra.iter().map(|s| s.to_string()).collect(),
            cluster_domain: "cluster.local".into(),
            service_ip: "10.43.0.1".parse().expect("literal IP"),
        }
    }

    #[test]
    fn creates_then_reuses_and_reissues_serving_cert_for_new_san() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let first = ensure_certificates(tmp.path(), &opts(&["node1"])).expect("create");
        let again = ensure_certificates(tmp.path(), &opts(&["node1"])).expect("reuse");
        assert_eq!(first.server_ca_pem, again.server_ca_pem);
        assert_eq!(first.serving_cert_pem, again.serving_cert_pem);
        assert_eq!(first.admin_cert_pem, again.admin_cert_pem);

        let with_san =
            ensure_certificates(tmp.path(), &opts(&["node1", "198.51.100.7"])).expect("san");
        assert_eq!(first.server_ca_pem, with_san.server_ca_pem);
        assert_ne!(first.serving_cert_pem, with_san.serving_cert_pem);
        assert!(
            serving_cert_is_usable(
                &with_san.dir.join("serving-kube-apiserver.crt"),
                &opts(&["node1", "198.51.100.7"]).serving_sans()
            )
            .expect("parse")
        );

        let mode = |name: &str| {
            use std::os::unix::fs::PermissionsExt;
            fs::metadata(first.dir.join(name))
                .expect("stat")
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("client-admin.key"), 0o600);
        assert_eq!(mode("server-ca.key"), 0o600);
        assert_eq!(mode("service.key"), 0o600);
    }
}
