//! IPv4 network prefixes (`10.42.0.0/16`) as given to `--cluster-cidr` and `--service-cidr`.
//!
//! Invariant: a parsed [`Ipv4Cidr`] is a network address, its host bits are zero. A value with host
//! bits set (`10.42.1.5/16`) is rejected with the network the user probably meant, rather than
//! silently masked, because the two CIDR flags must agree on every server. IPv6 is refused outright:
//! pod networking (bridge + VXLAN) is IPv4-only for now.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network: address with all host bits zero, plus prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix: u8,
}

/// Why a CIDR string was refused; the message is shown to the user as is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CidrError(String);

impl Ipv4Cidr {
    /// Builds a CIDR from a network address and prefix, refusing host bits and prefixes over 32.
    pub fn new(network: Ipv4Addr, prefix: u8) -> Result<Self, CidrError> {
        if prefix > 32 {
            return Err(CidrError(format!(
                "prefix length {prefix} is longer than 32"
            )));
        }
        let masked = Ipv4Addr::from(u32::from(network) & mask(prefix));
        if masked != network {
            return Err(CidrError(format!(
                "{network}/{prefix} has host bits set (did you mean {masked}/{prefix}?)"
            )));
        }
        Ok(Self { network, prefix })
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` lies inside this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.network)
    }

    /// Whether the two networks share at least one address.
    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }

    /// The highest address of the network (its broadcast address).
    pub fn last(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !mask(self.prefix))
    }
}

fn mask(prefix: u8) -> u32 {
    // checked_shl: a shift by 32 (prefix 0) would overflow, and prefix 0 means "no network bits".
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((addr, prefix)) = s.split_once('/') else {
            return Err(CidrError(format!(
                "{s:?} is not a CIDR (expected address/prefix, like 10.42.0.0/16)"
            )));
        };
        if addr.contains(':') {
            return Err(CidrError("IPv6 networks are not supported yet".to_string()));
        }
        let network: Ipv4Addr = addr
            .parse()
            .map_err(|_| CidrError(format!("{addr:?} is not an IPv4 address")))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| CidrError(format!("{prefix:?} is not a prefix length (0-32)")))?;
        Self::new(network, prefix)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_networks() {
        let c: Ipv4Cidr = "10.42.0.0/16".parse().unwrap();
        assert_eq!(c.to_string(), "10.42.0.0/16");
        assert!(c.contains("10.42.255.1".parse().unwrap()));
        assert!(!c.contains("10.43.0.1".parse().unwrap()));
        assert_eq!(c.last(), Ipv4Addr::new(10, 42, 255, 255));
        let all: Ipv4Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(Ipv4Addr::new(1, 2, 3, 4)));
    }

    #[test]
    fn refuses_bad_values() {
        for (input, want) in [
            ("10.42.0.0", "not a CIDR"),
            ("10.42.0.0/33", "longer than 32"),
            ("10.42.1.0/16", "did you mean 10.42.0.0/16?"),
            ("10.42.0/16", "not an IPv4 address"),
            ("10.42.0.0/x", "not a prefix length"),
            ("fd00::/64", "IPv6"),
        ] {
            let err = input.parse::<Ipv4Cidr>().unwrap_err().to_string();
            assert!(err.contains(want), "{input}: {err}");
        }
    }

    #[test]
    fn overlap() {
        let a: Ipv4Cidr = "10.42.0.0/16".parse().unwrap();
        let b: Ipv4Cidr = "10.43.0.0/16".parse().unwrap();
        let c: Ipv4Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(!a.overlaps(&b));
        assert!(a.overlaps(&c) && c.overlaps(&b));
    }
}
