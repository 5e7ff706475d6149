//! Node labels (`--node-label key=value`) with Kubernetes' syntax rules for keys and values.
//!
//! Invariant: a parsed [`Label`] passes the API server's own label validation, so registering a
//! node with it can never be refused for syntax. The same key and value rules serve taints.

use std::fmt;
use std::str::FromStr;

use crate::dns::check_subdomain;

/// A `key=value` label; the value may be empty.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Label {
    pub key: String,
    pub value: String,
}

/// Why a label was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LabelError(pub(crate) String);

/// A label key: `[prefix/]name`, prefix a DNS subdomain, name a qualified name of at most 63 characters.
pub(crate) fn check_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        check_subdomain(prefix).map_err(|why| format!("key {key:?}: prefix: {why}"))?;
    }
    if name.is_empty() || !is_qualified(name) {
        return Err(format!(
            "key {key:?}: the name part must be 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// A label value: empty, or at most 63 letters, digits, `-`, `_`, `.`, starting and ending alphanumeric.
pub(crate) fn check_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_qualified(value) {
        Ok(())
    } else {
        Err(format!(
            "value {value:?}: must be at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ))
    }
}

fn is_qualified(s: &str) -> bool {
    let bytes = s.as_bytes();
    s.len() <= 63
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl FromStr for Label {
    type Err = LabelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((key, value)) = s.split_once('=') else {
            return Err(LabelError(format!(
                "{s:?} is not a label (expected key=value)"
            )));
        };
        check_key(key).map_err(LabelError)?;
        check_value(value).map_err(LabelError)?;
        Ok(Self {
            key: key.to_owned(),
            value: value.to_owned(),
        })
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        let l: Label = "node.kubernetes.io/role=edge".parse().unwrap();
        assert_eq!(
            (l.key.as_str(), l.value.as_str()),
            ("node.kubernetes.io/role", "edge")
        );
        assert_eq!("gpu=".parse::<Label>().unwrap().value, "");
        assert_eq!(
            "Zone_A=x.y-z".parse::<Label>().unwrap().to_string(),
            "Zone_A=x.y-z"
        );
        let long = format!("k={}", "v".repeat(64));
        for bad in [
            "noequals",
            "=v",
            "-k=v",
            "k=-v",
            "Bad.Prefix/k=v",
            "a/b/c=v",
            "/k=v",
            long.as_str(),
            "k=v w",
        ] {
            assert!(bad.parse::<Label>().is_err(), "{bad:?}");
        }
    }
}
