//! Addresses a node or server advertises to others (`--node-ip`, `--node-external-ip`,
//! `--advertise-address`).
//!
//! Invariant: a [`NodeIp`] is an address another machine could reach: not unspecified
//! (`0.0.0.0`, `::`), not multicast, not the IPv4 broadcast address. (Listening on `0.0.0.0` is
//! fine, which is why `--bind-address` takes a plain `IpAddr`.)

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

/// A unicast address usable as a node's advertised address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeIp(IpAddr);

/// Why an address was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NodeIpError(String);

impl NodeIp {
    pub fn addr(&self) -> IpAddr {
        self.0
    }
}

impl FromStr for NodeIp {
    type Err = NodeIpError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ip: IpAddr = s
            .parse()
            .map_err(|_| NodeIpError("not an IP address".to_owned()))?;
        if ip.is_unspecified() {
            return Err(NodeIpError(
                "the unspecified address cannot be advertised; give this node's own address"
                    .to_owned(),
            ));
        }
        if ip.is_multicast() || ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
            return Err(NodeIpError("not a unicast address".to_owned()));
        }
        Ok(Self(ip))
    }
}

impl fmt::Display for NodeIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ips() {
        assert_eq!(
            "203.0.113.7".parse::<NodeIp>().unwrap().to_string(),
            "203.0.113.7"
        );
        assert!("fd00::7".parse::<NodeIp>().is_ok());
        for bad in [
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "255.255.255.255",
            "ff02::1",
            "pi.lan",
            "10.0.0.300",
        ] {
            assert!(bad.parse::<NodeIp>().is_err(), "{bad}");
        }
    }
}
