//! Resource quantities as the scheduler counts them: CPU in millicores, everything else in bytes
//! (or units), parsed from Kubernetes quantity strings (`500m`, `1.5`, `128Mi`, `1G`, `2e3`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// CPU a pod without a CPU request is assumed to use when *scoring* (not when filtering).
pub const DEFAULT_MILLI_CPU: i64 = 100;
/// Memory a pod without a memory request is assumed to use when scoring.
pub const DEFAULT_MEMORY: i64 = 200 * 1024 * 1024;

/// Requests or capacity: millicores of CPU, bytes of memory, and any other named resource.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub other: BTreeMap<String, i64>,
}

/// Parses a quantity; `milli` returns thousandths (for CPU). Malformed quantities count as 0.
pub fn parse(q: &str, milli: bool) -> i64 {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let Ok(value) = number.parse::<f64>() else {
        return 0;
    };
    let factor: f64 = match suffix {
        "" => 1.0,
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
        s if s.starts_with(['e', 'E']) => match s[1..].parse::<i32>() {
            Ok(exp) => 10f64.powi(exp),
            Err(_) => return 0,
        },
        _ => return 0,
    };
    let scaled = value * factor * if milli { 1000.0 } else { 1.0 };
    // Quantities round up to the smallest unit, as upstream.
    #[allow(clippy::cast_possible_truncation)]
    let rounded = scaled.ceil() as i64;
    rounded
}

impl Resources {
    /// From a `resources` map (requests, allocatable, capacity).
    pub fn from_map(map: Option<&BTreeMap<String, Quantity>>) -> Resources {
        let mut r = Resources::default();
        for (name, q) in map.into_iter().flatten() {
            match name.as_str() {
                "cpu" => r.milli_cpu = parse(&q.0, true),
                "memory" => r.memory = parse(&q.0, false),
                other => {
                    r.other.insert(other.to_string(), parse(&q.0, false));
                }
            }
        }
        r
    }

    fn add(&mut self, o: &Resources) {
        self.milli_cpu += o.milli_cpu;
        self.memory += o.memory;
        for (k, v) in &o.other {
            *self.other.entry(k.clone()).or_default() += v;
        }
    }

    fn max(&mut self, o: &Resources) {
        self.milli_cpu = self.milli_cpu.max(o.milli_cpu);
        self.memory = self.memory.max(o.memory);
        for (k, v) in &o.other {
            let e = self.other.entry(k.clone()).or_default();
            *e = (*e).max(*v);
        }
    }
}

fn container_requests(c: &Container) -> Resources {
    Resources::from_map(c.resources.as_ref().and_then(|r| r.requests.as_ref()))
}

/// What a pod requests: the sum of its containers, or its largest init container if larger,
/// plus its overhead.
pub fn pod_requests(pod: &Pod) -> Resources {
    let mut total = Resources::default();
    let Some(spec) = pod.spec.as_ref() else {
        return total;
    };
    for c in &spec.containers {
        total.add(&container_requests(c));
    }
    for c in spec.init_containers.iter().flatten() {
        total.max(&container_requests(c));
    }
    if let Some(overhead) = spec.overhead.as_ref() {
        total.add(&Resources::from_map(Some(overhead)));
    }
    total
}

/// A pod's requests with upstream's scoring defaults for containers that request nothing.
pub fn pod_requests_for_scoring(pod: &Pod) -> Resources {
    let mut total = Resources::default();
    for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        let r = container_requests(c);
        total.milli_cpu += if r.milli_cpu == 0 {
            DEFAULT_MILLI_CPU
        } else {
            r.milli_cpu
        };
        total.memory += if r.memory == 0 {
            DEFAULT_MEMORY
        } else {
            r.memory
        };
    }
    total
}

/// Adds `pod`'s requests to `total`.
pub fn accumulate(total: &mut Resources, pod: &Resources) {
    total.add(pod);
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn quantities() {
        for (q, milli, want) in [
            ("500m", true, 500),
            ("1.5", true, 1500),
            ("2", true, 2000),
            ("128Mi", false, 128 * 1024 * 1024),
            ("1G", false, 1_000_000_000),
            ("2e3", false, 2000),
            ("110", false, 110),
            ("bogus", false, 0),
        ] {
            assert_eq!(parse(q, milli), want, "{q}");
        }
    }
}
