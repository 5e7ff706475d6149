//! `registries.yaml` in k3s's format (`--private-registry`, default `/etc/r3s/registries.yaml`) and
//! the list of endpoints a pull tries.
//!
//! Semantics (k3s/containerd): `mirrors.<registry>` (or `mirrors."*"` when the registry has no entry
//! of its own) lists endpoint URLs tried in order, with the mirror's `rewrite` regexes applied to
//! the repository (first matching rule, in file order); the registry's default endpoint
//! (`https://<registry>/v2`, `https://index.docker.io/v2` for docker.io) is tried last, without
//! rewrites, unless disabled; a mirror endpoint equal to the default endpoint is dropped.
//! `configs.<host>` (or `configs."*"`) gives auth and TLS for the endpoint with that host:port.
//! Endpoint URLs may be `http://` (plain HTTP) or `https://` (the default when no scheme is given);
//! a path other than `/v2` is rejected because the registry client cannot address path prefixes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::reference::{DEFAULT_REGISTRY, ImageRef};

/// Where r3s reads registries.yaml unless `--private-registry` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/r3s/registries.yaml";

/// registries.yaml problems.
#[derive(Debug, thiserror::Error)]
pub enum RegistriesError {
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parse registries config {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error(
        "registries config: mirror {registry:?}: invalid rewrite pattern {pattern:?}: {source}"
    )]
    Rewrite {
        registry: String,
        pattern: String,
        source: Box<regex::Error>,
    },
    #[error("registries config: mirror {registry:?}: endpoint {endpoint:?}: {reason}")]
    Endpoint {
        registry: String,
        endpoint: String,
        reason: &'static str,
    },
    #[error(
        "registries config: mirror {registry:?}: rewrite {pattern:?} turned {from:?} into invalid repository {to:?}"
    )]
    RewriteResult {
        registry: String,
        pattern: String,
        from: String,
        to: String,
    },
}

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RegistriesConfig {
    #[serde(default)]
    pub mirrors: BTreeMap<String, MirrorConfig>,
    /// A key may be present with no value (`"docker.io":` in k3s's wildcard example): it then
    /// shadows `"*"` with "no settings".
    #[serde(default)]
    pub configs: BTreeMap<String, Option<HostConfig>>,
    /// k3s's `--disable-default-registry-endpoint`: never fall back to the upstream registry.
    #[serde(skip)]
    pub disable_default_endpoint: bool,
}

/// `mirrors.<registry>`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MirrorConfig {
    #[serde(default)]
    pub endpoint: Vec<String>,
    /// `pattern: replacement` pairs in file order.
    #[serde(default, deserialize_with = "ordered_map")]
    pub rewrite: Vec<(String, String)>,
}

/// `configs.<host>`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct HostConfig {
    pub auth: Option<AuthConfig>,
    pub tls: Option<TlsConfig>,
}

/// `configs.<host>.auth`: username/password, a base64 `user:password` in `auth`, or a bearer `token`.
#[derive(Clone, Default, Deserialize)]
pub struct AuthConfig {
    pub username: Option<String>,
    pub password: Option<String>,
    pub auth: Option<String>,
    pub token: Option<String>,
    pub identity_token: Option<String>,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// `configs.<host>.tls`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TlsConfig {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// One place a pull can fetch an image from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `false` for `http://` endpoints.
    pub https: bool,
    /// host[:port] to connect to.
    pub host: String,
    /// Repository to ask this endpoint for (after rewrites).
    pub repository: String,
    /// The upstream registry itself rather than a mirror.
    pub is_default: bool,
}

impl Endpoint {
    /// `https://host/v2` style, for messages.
    pub fn url(&self) -> String {
        format!(
            "{}://{}/v2",
            if self.https { "https" } else { "http" },
            self.host
        )
    }
}

impl RegistriesConfig {
    /// Loads `path`; a missing file is an empty config (k3s treats it the same way).
    pub fn load(path: &Path) -> Result<Self, RegistriesError> {
        match std::fs::read_to_string(path) {
            Ok(s) => Self::from_yaml(&s).map_err(|source| RegistriesError::Parse {
                path: path.into(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(RegistriesError::Read {
                path: path.into(),
                source,
            }),
        }
    }

    /// Parses the YAML text (an empty document is an empty config).
    pub fn from_yaml(s: &str) -> Result<Self, serde_yaml::Error> {
        if s.trim().is_empty() {
            return Ok(Self::default());
        }
        Ok(serde_yaml::from_str::<Option<Self>>(s)?.unwrap_or_default())
    }

    /// The settings for connections to `host` (exact key, else `"*"`).
    pub fn host_config(&self, host: &str) -> Option<&HostConfig> {
        match self.configs.get(host) {
            Some(c) => c.as_ref(),
            None => self.configs.get("*").and_then(Option::as_ref),
        }
    }

    /// The endpoints to try for `image`, in order.
    pub fn endpoints(&self, image: &ImageRef) -> Result<Vec<Endpoint>, RegistriesError> {
        let registry = image.registry();
        let default_host = if registry == DEFAULT_REGISTRY {
            "index.docker.io"
        } else {
            registry
        };
        let default = Endpoint {
            https: true,
            host: default_host.to_string(),
            repository: image.repository().to_string(),
            is_default: true,
        };
        let mut out = Vec::new();
        if let Some(mirror) = self.mirrors.get(registry).or_else(|| self.mirrors.get("*")) {
            let repository = rewrite(registry, &mirror.rewrite, image.repository())?;
            for raw in &mirror.endpoint {
                let (https, host) = parse_endpoint(registry, raw)?;
                if https && host == default_host {
                    continue; // same as the default endpoint: tried last, without rewrites
                }
                let ep = Endpoint {
                    https,
                    host,
                    repository: repository.clone(),
                    is_default: false,
                };
                if !out.contains(&ep) {
                    out.push(ep);
                }
            }
        }
        if !self.disable_default_endpoint {
            out.push(default);
        }
        Ok(out)
    }
}

fn parse_endpoint(registry: &str, raw: &str) -> Result<(bool, String), RegistriesError> {
    let bad = |reason| RegistriesError::Endpoint {
        registry: registry.into(),
        endpoint: raw.into(),
        reason,
    };
    let (https, rest) = if let Some(r) = raw.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = raw.strip_prefix("http://") {
        (false, r)
    } else if raw.contains("://") {
        return Err(bad("only http:// and https:// endpoints are supported"));
    } else {
        (true, raw)
    };
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if !matches!(path.trim_end_matches('/'), "" | "/v2") {
        return Err(bad("endpoint paths other than /v2 are not supported"));
    }
    Ok((https, host.to_string()))
}

fn rewrite(
    registry: &str,
    rules: &[(String, String)],
    repository: &str,
) -> Result<String, RegistriesError> {
    for (pattern, replacement) in rules {
        let re = regex::Regex::new(pattern).map_err(|source| RegistriesError::Rewrite {
            registry: registry.into(),
            pattern: pattern.clone(),
            source: Box::new(source),
        })?;
        if re.is_match(repository) {
            let to = re.replace(repository, replacement.as_str()).into_owned();
            // Validate by parsing a reference on a dummy registry.
            if ImageRef::parse(&format!("r3s.invalid/{to}")).is_err() {
                return Err(RegistriesError::RewriteResult {
                    registry: registry.into(),
                    pattern: pattern.clone(),
                    from: repository.into(),
                    to,
                });
            }
            return Ok(to);
        }
    }
    Ok(repository.to_string())
}

fn ordered_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
    let m: Option<serde_yaml::Mapping> = Option::deserialize(d)?;
    let mut out = Vec::new();
    for (k, v) in m.unwrap_or_default() {
        match (k, v) {
            (serde_yaml::Value::String(k), serde_yaml::Value::String(v)) => out.push((k, v)),
            _ => {
                return Err(serde::de::Error::custom(
                    "rewrite entries must be string: string",
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
mirrors:
  docker.io:
    endpoint:
      - "https://registry.example.com:5000"
      - "http://10.0.0.1:5000/v2"
      - "https://index.docker.io/v2"
    rewrite:
      "^rancher/(.*)": "mirrorproject/rancher-images/$1"
      "^(.*)$": "all/$1"
  "*":
    endpoint:
      - "http://127.0.0.1:5000"
configs:
  "registry.example.com:5000":
    auth:
      username: u
      password: p
    tls:
      ca_file: /etc/ca.pem
  "docker.io":
  "*":
    tls:
      insecure_skip_verify: true
"#;

    fn eps(cfg: &RegistriesConfig, image: &str) -> Vec<String> {
        let r = ImageRef::parse(image).expect("ref");
        cfg.endpoints(&r)
            .expect("endpoints")
            .iter()
            .map(|e| {
                format!(
                    "{} {}{}",
                    e.url(),
                    e.repository,
                    if e.is_default { " default" } else { "" }
                )
            })
            .collect()
    }

    #[test]
    fn endpoints_rewrites_and_wildcards() {
        let cfg = RegistriesConfig::from_yaml(YAML).expect("parse");
        assert_eq!(
            eps(&cfg, "rancher/pause:3.6"),
            [
                "https://registry.example.com:5000/v2 mirrorproject/rancher-images/pause",
                "http://10.0.0.1:5000/v2 mirrorproject/rancher-images/pause",
                "https://index.docker.io/v2 rancher/pause default",
            ]
        );
        assert_eq!(
            eps(&cfg, "nginx")[0],
            "https://registry.example.com:5000/v2 all/library/nginx"
        );
        assert_eq!(
            eps(&cfg, "quay.io/a/b"),
            [
                "http://127.0.0.1:5000/v2 a/b",
                "https://quay.io/v2 a/b default"
            ]
        );
        assert_eq!(
            eps(&RegistriesConfig::default(), "quay.io/a/b"),
            ["https://quay.io/v2 a/b default"]
        );
        let mut no_default = cfg.clone();
        no_default.disable_default_endpoint = true;
        assert_eq!(
            eps(&no_default, "quay.io/a/b"),
            ["http://127.0.0.1:5000/v2 a/b"]
        );

        let hc = cfg
            .host_config("registry.example.com:5000")
            .expect("config");
        assert_eq!(
            hc.auth.as_ref().and_then(|a| a.username.as_deref()),
            Some("u")
        );
        assert!(
            cfg.host_config("docker.io").is_none(),
            "explicit empty entry shadows *"
        );
        assert!(
            cfg.host_config("other:1")
                .and_then(|c| c.tls.as_ref())
                .is_some_and(|t| t.insecure_skip_verify)
        );
    }

    #[test]
    fn bad_configs() {
        let bad = |y: &str, image: &str| {
            RegistriesConfig::from_yaml(y)
                .expect("yaml")
                .endpoints(&ImageRef::parse(image).expect("ref"))
                .expect_err("bad")
        };
        let e = bad(
            "mirrors:\n  docker.io:\n    endpoint: [\"https://m/prefix\"]\n",
            "nginx",
        );
        assert!(e.to_string().contains("/v2"), "{e}");
        let e = bad(
            "mirrors:\n  docker.io:\n    endpoint: [m]\n    rewrite:\n      \"(\": x\n",
            "nginx",
        );
        assert!(e.to_string().contains("invalid rewrite pattern"), "{e}");
        let e = bad(
            "mirrors:\n  docker.io:\n    endpoint: [m]\n    rewrite:\n      \".*\": \"UP\"\n",
            "nginx",
        );
        assert!(e.to_string().contains("invalid repository"), "{e}");
        assert!(
            RegistriesConfig::from_yaml("")
                .expect("empty")
                .mirrors
                .is_empty()
        );
    }
}
