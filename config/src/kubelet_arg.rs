//! `--kubelet-arg key=value` (repeatable): k3s hands these to its embedded kubelet. The r3s agent
//! is its own kubelet, so it takes the settings it implements and refuses every other one with a
//! message naming those it understands; nothing is accepted and then ignored.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// One kubelet setting r3s implements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KubeletArg {
    /// `sync-frequency`: how often mounted configMap and secret volumes are compared with the
    /// API (kubelet's default 1m).
    SyncFrequency(Duration),
    /// `max-pods`: the node's pod capacity (default 110).
    MaxPods(u32),
}

/// Why a `--kubelet-arg` was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KubeletArgError(String);

const SUPPORTED: &str = "sync-frequency, max-pods";

impl FromStr for KubeletArg {
    type Err = KubeletArgError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let arg = s.trim_start_matches("--");
        let Some((key, value)) = arg.split_once('=') else {
            return Err(KubeletArgError(format!(
                "{s:?} is not a kubelet argument (expected key=value, e.g. max-pods=250)"
            )));
        };
        match key {
            "sync-frequency" => {
                let d = parse_duration(value).ok_or_else(|| {
                    KubeletArgError(format!(
                        "sync-frequency={value:?}: expected a duration such as 30s, 1m or 1m30s"
                    ))
                })?;
                if d < Duration::from_secs(1) {
                    return Err(KubeletArgError(format!(
                        "sync-frequency={value:?}: must be at least 1s"
                    )));
                }
                Ok(Self::SyncFrequency(d))
            }
            "max-pods" => match value.parse::<u32>() {
                Ok(n) if n > 0 => Ok(Self::MaxPods(n)),
                _ => Err(KubeletArgError(format!(
                    "max-pods={value:?}: expected a positive whole number"
                ))),
            },
            other => Err(KubeletArgError(format!(
                "kubelet argument {other:?} is not supported by r3s (supported: {SUPPORTED})"
            ))),
        }
    }
}

impl fmt::Display for KubeletArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SyncFrequency(d) => write!(f, "sync-frequency={}s", d.as_secs_f64()),
            Self::MaxPods(n) => write!(f, "max-pods={n}"),
        }
    }
}

/// A Go-style duration of whole units: `1h`, `2m30s`, `45s`, `500ms`.
fn parse_duration(s: &str) -> Option<Duration> {
    if s.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "h" => Duration::from_secs(3600),
            "m" => Duration::from_secs(60),
            "s" => Duration::from_secs(1),
            "ms" => Duration::from_millis(1),
            _ => return None,
        };
        total = total.checked_add(unit.checked_mul(u32::try_from(n).ok()?)?)?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supported_settings_parse() {
        assert_eq!(
            "sync-frequency=1m30s".parse::<KubeletArg>(),
            Ok(KubeletArg::SyncFrequency(Duration::from_secs(90)))
        );
        assert_eq!(
            "--max-pods=250".parse::<KubeletArg>(),
            Ok(KubeletArg::MaxPods(250))
        );
        assert_eq!(
            "sync-frequency=1500ms".parse::<KubeletArg>(),
            Ok(KubeletArg::SyncFrequency(Duration::from_millis(1500)))
        );
    }

    #[test]
    fn anything_else_is_refused_by_name() {
        let e = "eviction-hard=memory.available<100Mi"
            .parse::<KubeletArg>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"eviction-hard\" is not supported"), "{e}");
        assert!(e.contains("sync-frequency, max-pods"), "{e}");
        for bad in [
            "max-pods",
            "max-pods=0",
            "max-pods=x",
            "sync-frequency=10",
            "sync-frequency=500ms",
            "sync-frequency=1x",
        ] {
            assert!(bad.parse::<KubeletArg>().is_err(), "{bad}");
        }
    }
}
