//! Inclusive TCP/UDP port ranges such as `--service-node-port-range 30000-32767`.

use std::fmt;
use std::str::FromStr;

/// An inclusive range of ports, `first <= last`, never containing port 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    first: u16,
    last: u16,
}

/// Why a port range string was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PortRangeError(String);

impl PortRange {
    pub fn first(&self) -> u16 {
        self.first
    }

    pub fn last(&self) -> u16 {
        self.last
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl FromStr for PortRange {
    type Err = PortRangeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((first, last)) = s.split_once('-') else {
            return Err(PortRangeError(format!(
                "{s:?} is not a port range (expected first-last, like 30000-32767)"
            )));
        };
        let port = |p: &str| match p.trim().parse::<u16>() {
            Ok(0) | Err(_) => Err(PortRangeError(format!("{p:?} is not a port (1-65535)"))),
            Ok(n) => Ok(n),
        };
        let (first, last) = (port(first)?, port(last)?);
        if first > last {
            return Err(PortRangeError(
                "the first port is above the last".to_string(),
            ));
        }
        Ok(Self { first, last })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        let r: PortRange = "30000-32767".parse().unwrap();
        assert_eq!((r.first(), r.last()), (30000, 32767));
        assert!(r.contains(30000) && r.contains(32767) && !r.contains(32768));
        assert_eq!(r.to_string(), "30000-32767");
        for bad in ["30000", "0-10", "10-70000", "200-100", "a-b"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
    }
}
