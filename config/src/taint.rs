//! Node taints (`--node-taint key=value:Effect`, or `key:Effect`) with Kubernetes' syntax rules.

use std::fmt;
use std::str::FromStr;

use crate::label::{check_key, check_value};

/// What a taint does to pods that do not tolerate it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

impl TaintEffect {
    pub fn as_str(&self) -> &'static str {
        match self {
            TaintEffect::NoSchedule => "NoSchedule",
            TaintEffect::PreferNoSchedule => "PreferNoSchedule",
            TaintEffect::NoExecute => "NoExecute",
        }
    }
}

/// A taint as `kubectl taint` writes it; the value may be empty.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Taint {
    pub key: String,
    pub value: String,
    pub effect: TaintEffect,
}

/// Why a taint was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TaintError(String);

impl FromStr for Taint {
    type Err = TaintError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((key_value, effect)) = s.rsplit_once(':') else {
            return Err(TaintError(format!(
                "{s:?} is not a taint (expected key=value:Effect)"
            )));
        };
        let effect = match effect {
            "NoSchedule" => TaintEffect::NoSchedule,
            "PreferNoSchedule" => TaintEffect::PreferNoSchedule,
            "NoExecute" => TaintEffect::NoExecute,
            other => {
                return Err(TaintError(format!(
                    "effect {other:?} is not one of NoSchedule, PreferNoSchedule, NoExecute"
                )));
            }
        };
        let (key, value) = key_value.split_once('=').unwrap_or((key_value, ""));
        check_key(key).map_err(TaintError)?;
        check_value(value).map_err(TaintError)?;
        Ok(Self {
            key: key.to_owned(),
            value: value.to_owned(),
            effect,
        })
    }
}

impl fmt::Display for Taint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}:{}", self.key, self.effect.as_str())
        } else {
            write!(f, "{}={}:{}", self.key, self.value, self.effect.as_str())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taints() {
        let t: Taint = "dedicated=edge:NoSchedule".parse().unwrap();
        assert_eq!(t.effect, TaintEffect::NoSchedule);
        assert_eq!(t.to_string(), "dedicated=edge:NoSchedule");
        let t: Taint = "node-role.kubernetes.io/control-plane:NoExecute"
            .parse()
            .unwrap();
        assert_eq!((t.value.as_str(), t.effect), ("", TaintEffect::NoExecute));
        for bad in [
            "k=v",
            "k=v:Never",
            "=v:NoSchedule",
            "k=v v:NoSchedule",
            "k=v:noschedule",
        ] {
            assert!(bad.parse::<Taint>().is_err(), "{bad:?}");
        }
    }
}
