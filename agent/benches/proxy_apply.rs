//! Service proxy rule changes at scale, on the real kernel (root; a scratch network namespace):
//! compute and apply the ruleset for 1,000 Services × 3 endpoints and 1,000 Services × 5
//! endpoints (issue 7's figure), first as a full table replacement, then as the incremental
//! update after one endpoint changed, and after all of them moved. Prints one line per figure;
//! run with `cargo bench -p r3s-agent --bench proxy_apply` (or `cargo test --bench proxy_apply`
//! for a quick unoptimized run).
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Endpoints, Service};
use r3s_agent::proxy::{self, ProxyOptions, apply::Applier};
use serde_json::json;

fn objects(services: usize, per: usize, shift: usize) -> (Vec<Arc<Service>>, Vec<Arc<Endpoints>>) {
    let mut svcs = Vec::new();
    let mut eps = Vec::new();
    for i in 0..services {
        let name = format!("svc-{i}");
        svcs.push(Arc::new(
            serde_json::from_value(json!({
                "metadata": {"namespace": "bench", "name": name},
                "spec": {"type": "NodePort", "clusterIP": format!("10.43.{}.{}", i / 250, i % 250 + 1),
                         "ports": [{"name": "http", "port": 80, "nodePort": 30000 + i}]}
            }))
            .unwrap(),
        ));
        let addresses: Vec<_> = (0..per)
            .map(|j| {
                let n = i * per + j + shift;
                let ip = std::net::Ipv4Addr::from(
                    u32::from(std::net::Ipv4Addr::new(10, 42, 0, 1)) + n as u32,
                );
                json!({"ip": ip.to_string(), "nodeName": "bench"})
            })
            .collect();
        eps.push(Arc::new(
            serde_json::from_value(json!({
                "metadata": {"namespace": "bench", "name": name},
                "subsets": [{"addresses": addresses, "ports": [{"name": "http", "port": 8080}]}]
            }))
            .unwrap(),
        ));
    }
    (svcs, eps)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        println!("skipped: needs root (a scratch network namespace)");
        return;
    }
    let ns = format!("r3sp{}bench", std::process::id());
    let ok = Command::new("ip").args(["netns", "add", &ns]).status();
    if !ok.is_ok_and(|s| s.success()) {
        println!("skipped: cannot create a network namespace");
        return;
    }
    let _guard = DeleteNetns(ns.clone());
    let path = std::path::PathBuf::from(format!("/run/netns/{ns}"));
    let opts = ProxyOptions::new("bench", vec!["203.0.113.1".parse().unwrap()]);
    for per in [3, 5] {
        let (svcs, eps) = objects(1000, per, 0);
        let t = Instant::now();
        let rs = proxy::compute(&svcs, &eps, &opts);
        let compute = t.elapsed();
        let mut applier = Applier::open("r3s-proxy", Some(&path)).unwrap();
        let t = Instant::now();
        applier.apply(&rs, false).unwrap();
        let full = t.elapsed();

        // One endpoint of one Service changes.
        let mut eps1 = eps.clone();
        let (_, moved) = objects(1, per, 30_000);
        let mut one = (*moved[0]).clone();
        one.metadata.name = Some("svc-0".into());
        eps1[0] = Arc::new(one);
        let rs1 = proxy::compute(&svcs, &eps1, &opts);
        let t = Instant::now();
        applier.apply(&rs1, false).unwrap();
        let incremental = t.elapsed();

        // Every endpoint moves.
        let (_, all_moved) = objects(1000, per, 10_000);
        let rs2 = proxy::compute(&svcs, &all_moved, &opts);
        let t = Instant::now();
        applier.apply(&rs2, false).unwrap();
        let all = t.elapsed();
        println!(
            "1000 services x {per} endpoints ({} chains, {} map elements): compute {}, full apply {}, one endpoint changed {}, all endpoints changed {}",
            rs.chains.len(),
            rs.sets.iter().map(|s| s.elements.len()).sum::<usize>(),
            ms(compute),
            ms(full),
            ms(incremental),
            ms(all)
        );
        applier.remove().unwrap();
    }
}

/// Deletes the scratch namespace, on a panic too.
struct DeleteNetns(String);

impl Drop for DeleteNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}
