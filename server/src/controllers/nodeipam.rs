//! Node IPAM: gives every node a pod range (`spec.podCIDR` / `spec.podCIDRs`), a
//! `/node_cidr_mask_size` block of `--cluster-cidr` (k3s: a /24 of 10.42.0.0/16), lowest free
//! first. A deleted node's range is free again as soon as the node is gone from the cache.
//!
//! Invariant: ranges handed out in this process but not yet visible in the cache count as used,
//! so two nodes registering together never get the same range.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::Ipv4Addr;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::Store;
use serde_json::json;

use super::events::{EventType, Recorder, reference};
use super::informer::Informers;
use super::{ControllerOptions, cache};

/// The per-node blocks of a cluster CIDR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    base: u32,
    block_bits: u8,
    blocks: u32,
}

impl Pool {
    /// Parses `a.b.c.d/p` and the per-node mask size; IPv4 only.
    pub fn new(cluster_cidr: &str, node_mask: u8) -> Result<Pool, String> {
        let (ip, prefix) = cluster_cidr
            .split_once('/')
            .ok_or_else(|| format!("cluster CIDR {cluster_cidr:?} has no prefix length"))?;
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("cluster CIDR {cluster_cidr:?} is not an IPv4 range"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| format!("cluster CIDR {cluster_cidr:?} has a bad prefix length"))?;
        if prefix > node_mask || node_mask > 32 {
            return Err(format!(
                "node mask /{node_mask} does not fit in cluster CIDR {cluster_cidr}"
            ));
        }
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        };
        Ok(Pool {
            base: u32::from(ip) & mask,
            block_bits: node_mask,
            blocks: 1u32 << (node_mask - prefix).min(31),
        })
    }

    /// The `i`-th block as text.
    pub fn block(&self, i: u32) -> String {
        let size = if self.block_bits >= 32 {
            1
        } else {
            1u32 << (32 - self.block_bits)
        };
        let ip = Ipv4Addr::from(self.base.wrapping_add(i.wrapping_mul(size)));
        format!("{ip}/{}", self.block_bits)
    }

    /// The lowest block not in `used`.
    pub fn first_free(&self, used: &HashSet<String>) -> Option<String> {
        (0..self.blocks)
            .map(|i| self.block(i))
            .find(|b| !used.contains(b))
    }
}

/// Runs node IPAM until `shutdown`.
pub async fn run(
    client: kube::Client,
    informers: &Informers,
    opts: ControllerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let pool = match Pool::new(&opts.cluster_cidr, opts.node_cidr_mask_size) {
        Ok(pool) => pool,
        Err(error) => {
            tracing::error!(%error, "node IPAM disabled");
            return;
        }
    };
    let (store, changes) = (informers.nodes.store(), informers.nodes.wakes());
    let mut changes = changes.boxed();
    let recorder = Recorder::new(client.clone(), "node-ipam-controller");
    let work = async {
        let mut pending: HashMap<String, String> = HashMap::new();
        while changes.next().await.is_some() {
            allocate(&client, &pool, &store, &mut pending, &recorder).await;
        }
    };
    tokio::select! {
        _ = work => {}
        _ = shutdown => {}
    }
}

fn pod_cidr(node: &Node) -> Option<String> {
    node.spec
        .as_ref()?
        .pod_cidr
        .clone()
        .filter(|c| !c.is_empty())
}

async fn allocate(
    client: &kube::Client,
    pool: &Pool,
    store: &Store<Node>,
    pending: &mut HashMap<String, String>,
    recorder: &Recorder,
) {
    // Before the first full list every node's range would look free.
    if !cache::is_synced(store) {
        return;
    }
    let nodes = store.state();
    let names: HashSet<String> = nodes
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    // Forget allocations the cache now shows, and those of nodes that are gone.
    pending.retain(|name, _| {
        names.contains(name)
            && nodes
                .iter()
                .find(|n| n.metadata.name.as_ref() == Some(name))
                .is_some_and(|n| pod_cidr(n).is_none())
    });
    let mut used: HashSet<String> = nodes.iter().filter_map(|n| pod_cidr(n)).collect();
    used.extend(pending.values().cloned());
    let api: Api<Node> = Api::all(client.clone());
    for node in nodes.iter().filter(|n| pod_cidr(n).is_none()) {
        let name = node.metadata.name.clone().unwrap_or_default();
        if pending.contains_key(&name) {
            continue;
        }
        let Some(cidr) = pool.first_free(&used) else {
            recorder
                .record(
                    &reference("v1", "Node", &node.metadata),
                    EventType::Normal,
                    "CIDRNotAvailable",
                    &format!("Node {name} status is now: CIDRNotAvailable"),
                )
                .await;
            continue;
        };
        let patch = json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}});
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                used.insert(cidr.clone());
                pending.insert(name, cidr);
            }
            Err(error) => tracing::info!(%error, node = name, "could not assign a pod CIDR"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_of_the_k3s_default() {
        let pool = Pool::new("10.42.0.0/16", 24).expect("pool");
        assert_eq!(pool.block(0), "10.42.0.0/24");
        assert_eq!(pool.block(255), "10.42.255.0/24");
        let used: HashSet<String> = ["10.42.0.0/24".to_string()].into();
        assert_eq!(pool.first_free(&used).as_deref(), Some("10.42.1.0/24"));
        assert!(Pool::new("10.42.0.0/25", 24).is_err());
        assert!(Pool::new("fd00::/8", 24).is_err());
    }
}
