//! Kubernetes resource quantities (`100m`, `64Mi`, `1.5G`, `2e3`) as the integers the runtime
//! needs: milli-CPUs and bytes, rounded up as kubelet rounds.

/// A quantity string that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid quantity {0:?}")]
pub struct QuantityError(pub String);

/// The quantity's value, as a float (enough precision for CPUs and byte counts of real machines).
pub fn parse(q: &str) -> Result<f64, QuantityError> {
    let bad = || QuantityError(q.to_owned());
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let num: f64 = num.parse().map_err(|_| bad())?;
    let mult = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => {
            let exp: i32 = s[1..].parse().map_err(|_| bad())?;
            10f64.powi(exp)
        }
        _ => return Err(bad()),
    };
    Ok(num * mult)
}

/// CPUs as milli-CPUs, rounded up.
pub fn milli_cpu(q: &str) -> Result<i64, QuantityError> {
    Ok((parse(q)? * 1000.0).ceil() as i64)
}

/// A byte count, rounded up.
pub fn bytes(q: &str) -> Result<i64, QuantityError> {
    Ok(parse(q)?.ceil() as i64)
}

/// cgroup cpu.shares for a CPU request (kubelet: 1024 per CPU, at least 2).
pub fn shares(milli: i64) -> u64 {
    ((milli * 1024) / 1000).max(2) as u64
}

/// CFS quota (µs per 100 ms period) for a CPU limit (kubelet: at least 1 ms).
pub fn quota(milli: i64) -> i64 {
    (milli * 100_000 / 1000).max(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check() {
        for (q, milli) in [
            ("100m", 100),
            ("1", 1000),
            ("0.5", 500),
            ("2", 2000),
            ("1500u", 2),
        ] {
            assert_eq!(milli_cpu(q).unwrap(), milli, "{q}");
        }
        for (q, b) in [
            ("64Mi", 64 << 20),
            ("1G", 1_000_000_000),
            ("128974848", 128_974_848),
            ("129e6", 129_000_000),
            ("1.5Ki", 1536),
        ] {
            assert_eq!(bytes(q).unwrap(), b, "{q}");
        }
        assert!(parse("12xyz").is_err());
        assert!(parse("").is_err());
        assert_eq!(shares(100), 102);
        assert_eq!(shares(0), 2);
        assert_eq!(quota(500), 50_000);
        assert_eq!(quota(1), 1000);
    }
}
