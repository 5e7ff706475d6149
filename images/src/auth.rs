//! Registry credentials: Docker config JSON (the `.dockerconfigjson` of a
//! `kubernetes.io/dockerconfigjson` pull secret, handed in by the agent) and `registries.yaml`
//! `configs.<host>.auth`, resolved per endpoint host.
//!
//! Order for an endpoint: pull-secret entries for the endpoint host, then registries.yaml's config
//! for that host (or `"*"`), then anonymous. Basic credentials are also what the bearer-token flow
//! (WWW-Authenticate realm/service/scope) presents to the token server; the registry client does that
//! exchange. Docker Hub's aliases (`docker.io`, `index.docker.io`, `registry-1.docker.io`,
//! `https://index.docker.io/v1/`) are one host.

use std::collections::BTreeMap;

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use crate::registries::AuthConfig;

/// Credential parsing failures.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("docker config JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("credentials for {host}: `auth` is not base64 of user:password")]
    BadAuthField { host: String },
}

/// Credentials for one registry host.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Basic {
        username: String,
        password: String,
    },
    /// A registry token used as-is (`Authorization: Bearer`).
    Bearer(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Self::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

impl Credentials {
    pub(crate) fn to_registry_auth(&self) -> RegistryAuth {
        match self {
            Self::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
            Self::Bearer(t) => RegistryAuth::Bearer(t.clone()),
        }
    }
}

#[derive(Deserialize)]
struct DockerConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuthEntry>,
}

#[derive(Deserialize, Default)]
struct DockerAuthEntry {
    username: Option<String>,
    password: Option<String>,
    auth: Option<String>,
    #[serde(rename = "identitytoken")]
    identity_token: Option<String>,
    #[serde(rename = "registrytoken")]
    registry_token: Option<String>,
}

/// Credentials keyed by normalised host, from one or more Docker config JSON documents.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    by_host: BTreeMap<String, Credentials>,
}

impl Keyring {
    /// Adds the entries of a Docker config JSON (`{"auths": {...}}`); later documents do not
    /// override hosts an earlier one already set (kubelet uses the first matching secret).
    pub fn add_docker_config(&mut self, json: &[u8]) -> Result<(), AuthError> {
        let file: DockerConfigFile = serde_json::from_slice(json)?;
        for (key, entry) in file.auths {
            let host = normalize_host(&key);
            let creds = entry_credentials(&host, &entry)?;
            if let Some(c) = creds {
                self.by_host.entry(host).or_insert(c);
            }
        }
        Ok(())
    }

    /// Builds a keyring from Docker config JSON documents.
    pub fn from_docker_configs<'a>(
        docs: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Self, AuthError> {
        let mut k = Self::default();
        for d in docs {
            k.add_docker_config(d)?;
        }
        Ok(k)
    }

    /// Credentials for `host` (host[:port]).
    pub fn get(&self, host: &str) -> Option<&Credentials> {
        self.by_host.get(&normalize_host(host))
    }
}

fn entry_credentials(host: &str, e: &DockerAuthEntry) -> Result<Option<Credentials>, AuthError> {
    if let (Some(u), Some(p)) = (&e.username, &e.password)
        && !u.is_empty()
    {
        return Ok(Some(Credentials::Basic {
            username: u.clone(),
            password: p.clone(),
        }));
    }
    if let Some(a) = e.auth.as_deref().filter(|a| !a.is_empty()) {
        return decode_basic(host, a).map(Some);
    }
    if let Some(t) = e.registry_token.as_deref().filter(|t| !t.is_empty()) {
        return Ok(Some(Credentials::Bearer(t.to_string())));
    }
    if e.identity_token.is_some() {
        // OAuth2 refresh tokens need a token-exchange the registry client lacks; pull anonymously.
        tracing::warn!(
            host,
            "identitytoken credentials are not supported; trying anonymous access"
        );
    }
    Ok(None)
}

fn decode_basic(host: &str, b64: &str) -> Result<Credentials, AuthError> {
    let bad = || AuthError::BadAuthField {
        host: host.to_string(),
    };
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| bad())?;
    let s = String::from_utf8(raw).map_err(|_| bad())?;
    let (u, p) = s.split_once(':').ok_or_else(bad)?;
    Ok(Credentials::Basic {
        username: u.to_string(),
        password: p.to_string(),
    })
}

/// Credentials from a registries.yaml `auth` block.
pub fn from_registries_auth(host: &str, a: &AuthConfig) -> Result<Option<Credentials>, AuthError> {
    if let Some(t) = a.token.as_deref().filter(|t| !t.is_empty()) {
        return Ok(Some(Credentials::Bearer(t.to_string())));
    }
    let entry = DockerAuthEntry {
        username: a.username.clone(),
        password: a.password.clone(),
        auth: a.auth.clone(),
        identity_token: a.identity_token.clone(),
        registry_token: None,
    };
    entry_credentials(host, &entry)
}

/// `https://index.docker.io/v1/` → `docker.io`; `http://h:5000/x` → `h:5000`.
pub fn normalize_host(key: &str) -> String {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = k.split('/').next().unwrap_or(k).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".to_string(),
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_json() {
        let json = br#"{"auths":{
            "https://index.docker.io/v1/":{"auth":"dTE6cDE="},
            "127.0.0.1:5000":{"username":"u2","password":"p:2"},
            "tok.example":{"registrytoken":"abc"},
            "id.example":{"identitytoken":"xyz"}}}"#;
        let k = Keyring::from_docker_configs([&json[..]]).expect("parse");
        let basic = |u: &str, p: &str| Credentials::Basic {
            username: u.into(),
            password: p.into(),
        };
        assert_eq!(k.get("index.docker.io"), Some(&basic("u1", "p1")));
        assert_eq!(k.get("docker.io"), Some(&basic("u1", "p1")));
        assert_eq!(k.get("127.0.0.1:5000"), Some(&basic("u2", "p:2")));
        assert_eq!(
            k.get("tok.example"),
            Some(&Credentials::Bearer("abc".into()))
        );
        assert_eq!(k.get("id.example"), None);
        assert_eq!(k.get("127.0.0.1:5001"), None);
        let bad = Keyring::from_docker_configs([&br#"{"auths":{"h":{"auth":"!!"}}}"#[..]])
            .expect_err("bad");
        assert!(bad.to_string().contains("base64"), "{bad}");
        assert!(format!("{:?}", basic("u", "secret")).contains("redacted"));
    }
}
