//! The admin kubeconfig, written the way k3s writes `/etc/rancher/k3s/k3s.yaml`: one cluster, one
//! context and one user, all named `default`, pointing at `https://127.0.0.1:<port>` with the
//! server CA and the admin client certificate embedded as base64 data.
//!
//! Invariant: the file is replaced atomically and created with the requested mode, so it is never
//! readable by others even for a moment (the admin key is inside).

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::tls::{Certificates, TlsError};

/// Errors writing the kubeconfig.
#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    #[error("writing kubeconfig: {0}")]
    Write(#[from] TlsError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Renders the admin kubeconfig for `server` (e.g. `https://127.0.0.1:6443`).
pub fn render(server: &str, certs: &Certificates) -> String {
    render_with(
        server,
        &certs.server_ca_pem,
        &certs.admin_cert_pem,
        &certs.admin_key_pem,
    )
}

/// Renders a kubeconfig for any client certificate (PEM) trusting the server CA (PEM).
pub fn render_with(server: &str, ca_pem: &str, cert_pem: &str, key_pem: &str) -> String {
    let b64 = |pem: &str| STANDARD.encode(pem.as_bytes());
    format!(
        "apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: {ca}
    server: {server}
  name: default
contexts:
- context:
    cluster: default
    user: default
  name: default
current-context: default
kind: Config
preferences: {{}}
users:
- name: default
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
",
        ca = b64(ca_pem),
        cert = b64(cert_pem),
        key = b64(key_pem),
    )
}

/// Writes the admin kubeconfig to `path` with `mode` (k3s's default is 0600), creating parents.
pub fn write(
    path: &Path,
    mode: u32,
    server: &str,
    certs: &Certificates,
) -> Result<(), KubeconfigError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| KubeconfigError::Io {
            path: parent.display().to_string(),
            source,
        })?;
    }
    crate::tls::certs::write_file(path, render(server, certs).as_bytes(), mode)?;
    // The temporary file's mode is subject to the umask; set it exactly as asked.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        KubeconfigError::Io {
            path: path.display().to_string(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{CertOptions, ensure_certificates};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_k3s_shaped_kubeconfig_with_mode() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let certs = ensure_certificates(
            tmp.path(),
            &CertOptions {
                extra_sans: vec![],
                cluster_domain: "cluster.local".into(),
                service_ip: "10.43.0.1".parse().expect("literal"),
            },
        )
        .expect("certs");
        let path = tmp.path().join("etc/r3s.yaml");
        write(&path, 0o640, "https://127.0.0.1:6443", &certs).expect("write");
        let text = std::fs::read_to_string(&path).expect("read");
        let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("yaml");
        assert_eq!(doc["current-context"], "default");
        assert_eq!(
            doc["clusters"][0]["cluster"]["server"],
            "https://127.0.0.1:6443"
        );
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
    }
}
