//! Renewal and rotation of the leaf certificates under `<data-dir>/server/tls/`.
//!
//! A leaf is any `<name>.crt` with a `<name>.key` beside it that is not a CA and was signed by one
//! of the cluster's CAs (`server-ca` or `client-ca`): today the serving certificate and the admin
//! client certificate, and whatever leaf a later module stores there, without a list to keep in
//! step. A renewed leaf keeps its subject, SANs and extended key usages, gets a new key, a new
//! serial and a fresh one-year validity, and is signed by the same CA, whose key never changes: a
//! joined agent (which trusts the CA, not the leaf) and every issued client certificate keep
//! working.
//!
//! At every start ([`renew_expiring`], called by [`super::ensure_certificates`]) leaves with fewer
//! than [`RENEW_BEFORE_DAYS`] days left, or already expired, are re-issued. `r3s-server certificate
//! rotate` ([`rotate`]) re-issues them now, all or the named ones, after copying the old files to
//! `<data-dir>/server/tls-<unix time>/`, as k3s does; it is meant for a stopped server.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use super::TlsError;
use super::certs::{CAS, issue_leaf, load_issuer, read, write_file};

/// A leaf with fewer days than this left is re-issued at start.
pub const RENEW_BEFORE_DAYS: i64 = 90;
/// How long a (re-)issued leaf certificate is valid.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// Short names `certificate rotate --service` accepts besides file names (k3s's service names).
const SERVICE_ALIASES: &[(&str, &str)] = &[
    ("admin", "client-admin"),
    ("api-server", "serving-kube-apiserver"),
    ("kube-apiserver", "serving-kube-apiserver"),
];

/// One leaf certificate on disk.
#[derive(Clone, Debug)]
pub struct Leaf {
    /// The file stem: `serving-kube-apiserver` for `serving-kube-apiserver.{crt,key}`.
    pub name: String,
    /// Which CA signed it (`server-ca` or `client-ca`).
    pub ca: &'static str,
    /// Hexadecimal serial number.
    pub serial: String,
    /// Seconds since the epoch.
    pub not_after: i64,
}

/// A leaf that was re-issued.
#[derive(Clone, Debug)]
pub struct Renewed {
    pub name: String,
    pub old_serial: String,
    pub new_serial: String,
    pub not_after: i64,
}

/// Every leaf certificate under `dir` (`<data-dir>/server/tls`), sorted by name.
pub fn leaves(dir: &Path) -> Result<Vec<Leaf>, TlsError> {
    let cas = load_cas(dir)?;
    let mut found = Vec::new();
    let entries = fs::read_dir(dir).map_err(|source| io_err(dir, source))?;
    for entry in entries {
        let path = entry.map_err(|source| io_err(dir, source))?.path();
        let Some(name) = leaf_name(&path) else {
            continue;
        };
        if cas.iter().any(|(ca, _)| *ca == name) || !dir.join(format!("{name}.key")).exists() {
            continue;
        }
        let pem = read(&path)?;
        let der = pem_der(&path, &pem)?;
        let cert = parse(&path, &der)?;
        if cert.is_ca() {
            continue;
        }
        // Only what our own CAs signed: anything else in the directory is not ours to re-issue.
        let Some((ca, _)) = cas
            .iter()
            .find(|(_, subject)| cert.issuer().as_raw() == subject.as_slice())
        else {
            continue;
        };
        found.push(Leaf {
            name,
            ca,
            serial: cert.raw_serial_as_string(),
            not_after: cert.validity().not_after.timestamp(),
        });
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

/// Re-issues every leaf under `dir` with fewer than [`RENEW_BEFORE_DAYS`] days left.
pub fn renew_expiring(dir: &Path) -> Result<Vec<Renewed>, TlsError> {
    let limit = now() + RENEW_BEFORE_DAYS * 24 * 3600;
    let mut renewed = Vec::new();
    for leaf in leaves(dir)? {
        if leaf.not_after < limit {
            let done = reissue(dir, &leaf, LEAF_VALIDITY)?;
            tracing::info!(
                certificate = %done.name,
                old_serial = %done.old_serial,
                new_serial = %done.new_serial,
                "renewed a leaf certificate with fewer than {RENEW_BEFORE_DAYS} days left"
            );
            renewed.push(done);
        }
    }
    Ok(renewed)
}

/// `r3s-server certificate rotate`: re-issues the named leaves (file names or k3s service names;
/// all when `services` is empty) under `<data_dir>/server/tls`, keeping the CAs. The old files are
/// copied to `<data_dir>/server/tls-<unix time>/` first.
pub fn rotate(data_dir: &Path, services: &[String]) -> Result<Vec<Renewed>, TlsError> {
    rotate_with_validity(data_dir, services, LEAF_VALIDITY)
}

/// [`rotate`] with a given validity. Tests use it to make certificates that are about to expire.
#[doc(hidden)]
pub fn rotate_with_validity(
    data_dir: &Path,
    services: &[String],
    validity: Duration,
) -> Result<Vec<Renewed>, TlsError> {
    let dir = data_dir.join("server").join("tls");
    if !dir.join("server-ca.crt").exists() {
        return Err(TlsError::Config(format!(
            "{} holds no cluster CA: nothing to rotate (wrong --data-dir?)",
            dir.display()
        )));
    }
    let all = leaves(&dir)?;
    let wanted: Vec<String> = services
        .iter()
        .map(|s| {
            SERVICE_ALIASES
                .iter()
                .find(|(alias, _)| alias == s)
                .map_or_else(|| s.clone(), |(_, name)| (*name).to_string())
        })
        .collect();
    if let Some(unknown) = wanted.iter().find(|w| !all.iter().any(|l| &l.name == *w)) {
        let known: Vec<&str> = all.iter().map(|l| l.name.as_str()).collect();
        return Err(TlsError::Config(format!(
            "no leaf certificate named {unknown} in {} (there are: {}; aliases: admin, api-server)",
            dir.display(),
            known.join(", ")
        )));
    }
    let chosen: Vec<&Leaf> = all
        .iter()
        .filter(|l| wanted.is_empty() || wanted.contains(&l.name))
        .collect();
    let backup = data_dir.join("server").join(format!("tls-{}", now()));
    fs::create_dir_all(&backup).map_err(|source| io_err(&backup, source))?;
    for leaf in &chosen {
        for ext in ["crt", "key"] {
            let from = dir.join(format!("{}.{ext}", leaf.name));
            let data = fs::read(&from).map_err(|source| io_err(&from, source))?;
            let mode = if ext == "key" { 0o600 } else { 0o644 };
            write_file(&backup.join(format!("{}.{ext}", leaf.name)), &data, mode)?;
        }
    }
    chosen
        .into_iter()
        .map(|leaf| reissue(&dir, leaf, validity))
        .collect()
}

/// Re-issues one leaf from its CA with the same subject, SANs and extended key usages.
fn reissue(dir: &Path, leaf: &Leaf, validity: Duration) -> Result<Renewed, TlsError> {
    let path = dir.join(format!("{}.crt", leaf.name));
    let pem = read(&path)?;
    let der = pem_der(&path, &pem)?;
    let cert = parse(&path, &der)?;
    let params = params_like(&path, &cert, validity)?;
    let ca_pem = read(&dir.join(format!("{}.crt", leaf.ca)))?;
    let ca_key = read(&dir.join(format!("{}.key", leaf.ca)))?;
    let issuer: Issuer<'static, KeyPair> = load_issuer(dir, leaf.ca, &ca_pem, &ca_key)?;
    issue_leaf(dir, &leaf.name, &params, &issuer)?;
    let new = leaves(dir)?
        .into_iter()
        .find(|l| l.name == leaf.name)
        .ok_or_else(|| TlsError::Parse {
            path: path.display().to_string(),
            reason: "the re-issued certificate is not a leaf of the cluster CA".into(),
        })?;
    Ok(Renewed {
        name: leaf.name.clone(),
        old_serial: leaf.serial.clone(),
        new_serial: new.serial,
        not_after: new.not_after,
    })
}

/// The parameters of a new certificate like `cert`: subject (CN and O), SANs, extended key usages.
fn params_like(
    path: &Path,
    cert: &X509Certificate<'_>,
    validity: Duration,
) -> Result<CertificateParams, TlsError> {
    let parse_err = |reason: String| TlsError::Parse {
        path: path.display().to_string(),
        reason,
    };
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    for org in cert.subject().iter_organization() {
        let org = org.as_str().map_err(|e| parse_err(e.to_string()))?;
        params
            .distinguished_name
            .push(DnType::OrganizationName, org);
    }
    for cn in cert.subject().iter_common_name() {
        let cn = cn.as_str().map_err(|e| parse_err(e.to_string()))?;
        params.distinguished_name.push(DnType::CommonName, cn);
    }
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => params.subject_alt_names.push(SanType::DnsName(
                    (*dns)
                        .to_string()
                        .try_into()
                        .map_err(|e: rcgen::Error| parse_err(format!("SAN {dns}: {e}")))?,
                )),
                GeneralName::IPAddress(bytes) => {
                    if let Some(ip) = ip_from_bytes(bytes) {
                        params.subject_alt_names.push(SanType::IpAddress(ip));
                    }
                }
                _ => {}
            }
        }
    }
    if let Ok(Some(eku)) = cert.extended_key_usage() {
        if eku.value.server_auth {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if eku.value.client_auth {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
    }
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    params.use_authority_key_identifier_extension = true;
    super::certs::set_validity_for(&mut params, validity)?;
    Ok(params)
}

/// The CAs' names and raw subjects, to recognise which one signed a leaf.
fn load_cas(dir: &Path) -> Result<Vec<(&'static str, Vec<u8>)>, TlsError> {
    let mut cas = Vec::new();
    for ca in CAS {
        let path = dir.join(format!("{ca}.crt"));
        if !path.exists() {
            continue;
        }
        let pem = read(&path)?;
        let der = pem_der(&path, &pem)?;
        let cert = parse(&path, &der)?;
        cas.push((ca, cert.subject().as_raw().to_vec()));
    }
    Ok(cas)
}

fn leaf_name(path: &Path) -> Option<String> {
    if path.extension()? != "crt" || !path.is_file() {
        return None;
    }
    path.file_stem()?.to_str().map(str::to_owned)
}

fn pem_der(path: &Path, text: &str) -> Result<Vec<u8>, TlsError> {
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(text.as_bytes()).map_err(|e| TlsError::Parse {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
    Ok(pem.contents)
}

fn parse<'a>(path: &Path, der: &'a [u8]) -> Result<X509Certificate<'a>, TlsError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert)
        .map_err(|e| TlsError::Parse {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn io_err(path: &Path, source: std::io::Error) -> TlsError {
    TlsError::Io {
        path: PathBuf::from(path).display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{CertOptions, ensure_certificates};

    fn opts() -> CertOptions {
        CertOptions {
            extra_sans: vec!["node1".into(), "198.51.100.7".into()],
            cluster_domain: "cluster.local".into(),
            service_ip: "10.43.0.1".parse().expect("literal IP"),
        }
    }

    fn by_name(dir: &Path, name: &str) -> Leaf {
        leaves(dir)
            .expect("leaves")
            .into_iter()
            .find(|l| l.name == name)
            .expect("leaf present")
    }

    #[test]
    fn finds_the_leaves_and_not_the_cas() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let certs = ensure_certificates(tmp.path(), &opts()).expect("create");
        let names: Vec<String> = leaves(&certs.dir)
            .expect("leaves")
            .into_iter()
            .map(|l| l.name)
            .collect();
        assert_eq!(names, ["client-admin", "serving-kube-apiserver"]);
        assert_eq!(by_name(&certs.dir, "client-admin").ca, "client-ca");
        assert_eq!(
            by_name(&certs.dir, "serving-kube-apiserver").ca,
            "server-ca"
        );
    }

    #[test]
    fn short_lived_leaves_are_renewed_at_start_from_the_same_ca() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let first = ensure_certificates(tmp.path(), &opts()).expect("create");
        // A third leaf in the directory (as another module would store one) is covered too.
        let (crt, key) =
            crate::tls::issue_client_certificate(tmp.path(), "r3st-extra", &[]).expect("issue");
        fs::write(first.dir.join("r3st-extra.crt"), crt).expect("write");
        fs::write(first.dir.join("r3st-extra.key"), key).expect("write");
        rotate_with_validity(tmp.path(), &[], Duration::from_secs(30 * 24 * 3600))
            .expect("short-lived");
        let short = leaves(&first.dir).expect("leaves");
        assert_eq!(short.len(), 3);
        assert!(short.iter().all(|l| l.not_after < now() + 31 * 24 * 3600));

        let again = ensure_certificates(tmp.path(), &opts()).expect("restart");
        assert_eq!(first.server_ca_pem, again.server_ca_pem);
        assert_eq!(first.client_ca_pem, again.client_ca_pem);
        for old in &short {
            let new = by_name(&first.dir, &old.name);
            assert_ne!(new.serial, old.serial, "{}", old.name);
            assert!(new.not_after > now() + 300 * 24 * 3600, "{}", old.name);
            assert_eq!(new.ca, old.ca);
        }
        // The renewed serving certificate kept its SANs, so it is not re-issued once more.
        let kept = ensure_certificates(tmp.path(), &opts()).expect("third start");
        assert_eq!(kept.serving_cert_pem, again.serving_cert_pem);
        assert_eq!(kept.admin_cert_pem, again.admin_cert_pem);
        let admin = x509_parser::pem::parse_x509_pem(again.admin_cert_pem.as_bytes())
            .expect("pem")
            .1;
        let admin = admin.parse_x509().expect("x509");
        assert_eq!(
            admin.subject().to_string(),
            "O=system:masters, CN=system:admin"
        );
    }

    #[test]
    fn rotate_names_services_and_refuses_unknown_ones() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let certs = ensure_certificates(tmp.path(), &opts()).expect("create");
        let before = by_name(&certs.dir, "serving-kube-apiserver");
        let admin_before = by_name(&certs.dir, "client-admin");
        let done = rotate(tmp.path(), &["admin".into()]).expect("rotate admin");
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].name, "client-admin");
        assert_ne!(
            by_name(&certs.dir, "client-admin").serial,
            admin_before.serial
        );
        assert_eq!(
            by_name(&certs.dir, "serving-kube-apiserver").serial,
            before.serial
        );

        let err = rotate(tmp.path(), &["etcd".into()]).expect_err("unknown");
        assert!(
            err.to_string().contains("no leaf certificate named etcd"),
            "{err}"
        );
        let err = rotate(&tmp.path().join("nothing"), &[]).expect_err("no CA");
        assert!(err.to_string().contains("holds no cluster CA"), "{err}");
    }
}
