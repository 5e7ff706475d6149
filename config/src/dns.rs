//! DNS names as Kubernetes uses them: node names, `--cluster-domain`, `--tls-san` hosts.
//!
//! Invariant: a [`DnsName`] is an RFC 1123 subdomain as Kubernetes checks it (lowercase letters,
//! digits, `-` and `.`, each dot-separated label 1-63 characters starting and ending with a letter
//! or digit, 253 characters in all), so it is usable as a Node object's name without a second check.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;

/// A lowercase RFC 1123 subdomain.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DnsName(String);

/// Why a name was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DnsNameError(String);

impl DnsName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The machine's host name, lowercased as k3s does, for when `--node-name` is not given.
    pub fn from_hostname() -> Result<Self, DnsNameError> {
        Self::from_hostname_file(Path::new("/proc/sys/kernel/hostname"))
    }

    fn from_hostname_file(path: &Path) -> Result<Self, DnsNameError> {
        let raw = std::fs::read_to_string(path).map_err(|e| {
            DnsNameError(format!(
                "cannot read the host name from {}: {e}",
                path.display()
            ))
        })?;
        let name = raw.trim().to_lowercase();
        name.parse().map_err(|DnsNameError(why)| {
            DnsNameError(format!(
                "the host name is not a valid node name ({why}); pass --node-name"
            ))
        })
    }
}

/// Checks `s` against Kubernetes' DNS subdomain rule; the error says which rule failed.
pub(crate) fn check_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("a DNS name cannot be empty".into());
    }
    if s.len() > 253 {
        return Err(format!("{s:?} is longer than 253 characters"));
    }
    for label in s.split('.') {
        let ok_inner = label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let ok_ends = label
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
            && label
                .bytes()
                .last()
                .is_some_and(|b| b.is_ascii_alphanumeric());
        if label.len() > 63 || !ok_inner || !ok_ends {
            return Err(format!(
                "{s:?} is not a DNS name: each dot-separated part must be 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit"
            ));
        }
    }
    Ok(())
}

impl FromStr for DnsName {
    type Err = DnsNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        check_subdomain(s).map_err(DnsNameError)?;
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Display for DnsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A host as a certificate's Subject Alternative Name takes it: an IP address or a DNS name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    Ip(IpAddr),
    Dns(DnsName),
}

impl FromStr for Host {
    type Err = DnsNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Host::Ip(ip));
        }
        s.parse::<DnsName>()
            .map(Host::Dns)
            .map_err(|_| DnsNameError(format!("{s:?} is neither an IP address nor a DNS name")))
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(ip) => ip.fmt(f),
            Host::Dns(name) => name.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        for good in ["pi-1", "cluster.local", "a", "n1.example.com", "0pi"] {
            assert!(good.parse::<DnsName>().is_ok(), "{good}");
        }
        let long = "a".repeat(64);
        for bad in ["", "Pi", "-a", "a-", "a..b", "a_b", long.as_str(), "a.b."] {
            assert!(bad.parse::<DnsName>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hosts() {
        assert_eq!(
            "10.0.0.1".parse::<Host>().unwrap(),
            Host::Ip("10.0.0.1".parse().unwrap())
        );
        assert!(matches!("::1".parse::<Host>().unwrap(), Host::Ip(_)));
        assert!(matches!("pi.lan".parse::<Host>().unwrap(), Host::Dns(_)));
        assert!("bad host".parse::<Host>().is_err());
    }

    #[test]
    fn hostname_is_lowercased_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hostname");
        std::fs::write(&file, "Pi-Node1\n").unwrap();
        assert_eq!(
            DnsName::from_hostname_file(&file).unwrap().as_str(),
            "pi-node1"
        );
        std::fs::write(&file, "bad_name\n").unwrap();
        let err = DnsName::from_hostname_file(&file).unwrap_err().to_string();
        assert!(err.contains("--node-name"), "{err}");
        let missing = DnsName::from_hostname_file(&dir.path().join("none")).unwrap_err();
        assert!(missing.to_string().contains("cannot read"), "{missing}");
    }
}
