//! Image references with Docker's defaulting rules: `nginx` is `docker.io/library/nginx:latest`,
//! `user/app` is `docker.io/user/app:latest`, `host:port/repo:tag` keeps its registry, and a
//! `@sha256:<hex>` digest pins the content (a tag is then kept only if given).
//!
//! Invariant: an [`ImageRef`] is always fully qualified (registry, repository, and a tag or a
//! digest), so `to_string()` is the canonical name images are recorded under.

use std::fmt;

use crate::digest::Digest;

/// The registry images without a registry component belong to.
pub const DEFAULT_REGISTRY: &str = "docker.io";
const DEFAULT_TAG: &str = "latest";

/// Why a string is not a valid image reference.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("invalid image reference {input:?}: {reason}")]
    Invalid { input: String, reason: &'static str },
}

/// A fully qualified image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl ImageRef {
    /// Parses `input` with Docker's defaulting rules.
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        let bad = |reason| ReferenceError::Invalid {
            input: input.to_string(),
            reason,
        };
        if input.is_empty() {
            return Err(bad("empty"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((name, d)) => (
                name,
                Some(Digest::parse(d).map_err(|_| bad("digest is not sha256:<64 hex>"))?),
            ),
            None => (input, None),
        };
        // A tag is a ':' after the last '/', so `host:5000/app` has no tag.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag
            && !valid_tag(t)
        {
            return Err(bad("tag must match [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"));
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, remainder))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), remainder.to_string())
            }
            _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
        };
        if !valid_registry(&registry) {
            return Err(bad("registry must be a host name with an optional port"));
        }
        let registry = if registry == "index.docker.io" || registry == "registry-1.docker.io" {
            DEFAULT_REGISTRY.to_string()
        } else {
            registry
        };
        if repository.is_empty() || !repository.split('/').all(valid_component) {
            return Err(bad(
                "repository path components must be lowercase [a-z0-9] separated by '.', '_', '__' or '-'",
            ));
        }
        let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if repository.len() + registry.len() + 1 > 255 {
            return Err(bad("name longer than 255 characters"));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (None, Some(_)) => None,
        };
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The registry host (and port), `docker.io` for Docker Hub.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path inside the registry, e.g. `library/nginx`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if the reference has one.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The pinned digest, if the reference has one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The same image pinned to `digest` (tag dropped): what a container records as `imageID`-ish.
    pub fn with_digest(&self, digest: Digest) -> Self {
        Self {
            tag: None,
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// What a manifest request addresses: the digest if pinned, else the tag.
    pub fn manifest_selector(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            // Parsing guarantees a tag or a digest.
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for ImageRef {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn valid_tag(t: &str) -> bool {
    let mut chars = t.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric() || c == '_')
        && t.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
}

fn valid_registry(r: &str) -> bool {
    let (host, port) = match r.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (r, None),
    };
    let host_ok = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    host_ok && port_ok
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn check(input: &str, expected: &str) {
        let got = ImageRef::parse(input)
            .map(|r| r.to_string())
            .map_err(|e| e.to_string());
        assert_eq!(got.as_deref(), Ok(expected), "input {input:?}");
    }

    fn check_err(input: &str, reason_part: &str) {
        match ImageRef::parse(input) {
            Ok(r) => panic!("{input:?} parsed as {r}"),
            Err(e) => assert!(e.to_string().contains(reason_part), "{input:?}: {e}"),
        }
    }

    #[test]
    fn docker_defaulting() {
        for (input, expected) in [
            ("nginx", "docker.io/library/nginx:latest"),
            ("nginx:1.25", "docker.io/library/nginx:1.25"),
            ("user/app", "docker.io/user/app:latest"),
            ("user/app:v1", "docker.io/user/app:v1"),
            ("docker.io/nginx", "docker.io/library/nginx:latest"),
            (
                "index.docker.io/library/nginx",
                "docker.io/library/nginx:latest",
            ),
            (
                "docker.io/library/nginx:latest",
                "docker.io/library/nginx:latest",
            ),
            ("localhost/app", "localhost/app:latest"),
            ("localhost:5000/app", "localhost:5000/app:latest"),
            (
                "127.0.0.1:5000/busybox:multi",
                "127.0.0.1:5000/busybox:multi",
            ),
            (
                "registry.example.com/a/b/c:1.0-rc_1",
                "registry.example.com/a/b/c:1.0-rc_1",
            ),
            ("ghcr.io/org/app", "ghcr.io/org/app:latest"),
            ("a.b-c.d:443/x__y/z--w", "a.b-c.d:443/x__y/z--w:latest"),
            // A first component without '.' or ':' (and not localhost) is a Docker Hub user.
            ("myhost/app", "docker.io/myhost/app:latest"),
        ] {
            check(input, expected);
        }
    }

    #[test]
    fn digests() {
        check(
            &format!("nginx@{D}"),
            &format!("docker.io/library/nginx@{D}"),
        );
        check(
            &format!("nginx:1.25@{D}"),
            &format!("docker.io/library/nginx:1.25@{D}"),
        );
        check(
            &format!("127.0.0.1:5000/app@{D}"),
            &format!("127.0.0.1:5000/app@{D}"),
        );
        let r = ImageRef::parse(&format!("nginx@{D}")).expect("valid");
        assert_eq!(r.tag(), None);
        assert_eq!(r.manifest_selector(), D);
        let r = ImageRef::parse("host:1/x").expect("valid");
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("host:1", "x", Some("latest"))
        );
    }

    #[test]
    fn rejects() {
        for (input, why) in [
            ("", "empty"),
            ("Nginx", "lowercase"),
            ("user/App", "lowercase"),
            ("nginx:", "tag"),
            ("nginx:-x", "tag"),
            ("nginx@sha256:abc", "digest"),
            ("nginx@md5:0123", "digest"),
            ("a//b", "lowercase"),
            ("host:port/app", "registry"),
            ("-bad.host/app", "registry"),
            ("app/", "lowercase"),
            ("a..b", "lowercase"),
        ] {
            check_err(input, why);
        }
    }
}
