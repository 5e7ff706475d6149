//! The Node object: registration (labels, taints) and status (addresses, capacity, allocatable,
//! nodeInfo, conditions with heartbeats), written through `nodes/status`.
//!
//! Invariant: registration never removes labels or taints someone else added; the agent only
//! adds its own. Status is written whole (a merge patch) when it changed or every 5 minutes (as
//! kubelet: the Lease is the frequent heartbeat), with `lastTransitionTime` kept while a
//! condition's value does not change.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::info::{self, Capacity, SystemInfo};
use super::{AgentError, NodeOptions};

/// The labels the agent puts on its Node.
pub fn labels(opts: &NodeOptions) -> BTreeMap<String, String> {
    let arch = info::architecture();
    let mut l = BTreeMap::new();
    l.insert("kubernetes.io/hostname".into(), opts.node_name.clone());
    l.insert("kubernetes.io/os".into(), "linux".into());
    l.insert("kubernetes.io/arch".into(), arch.into());
    l.insert("beta.kubernetes.io/os".into(), "linux".into());
    l.insert("beta.kubernetes.io/arch".into(), arch.into());
    l.insert("node.kubernetes.io/instance-type".into(), "r3s".into());
    if opts.control_plane {
        l.insert(
            "node-role.kubernetes.io/control-plane".into(),
            "true".into(),
        );
        l.insert("node-role.kubernetes.io/master".into(), "true".into());
    }
    for label in &opts.labels {
        l.insert(label.key.clone(), label.value.clone());
    }
    l
}

fn taints(opts: &NodeOptions) -> Vec<Value> {
    opts.taints
        .iter()
        .map(|t| {
            let mut v = json!({"key": t.key, "effect": t.effect.as_str()});
            if !t.value.is_empty() {
                v["value"] = json!(t.value);
            }
            v
        })
        .collect()
}

/// Creates the Node, or adds this agent's labels and taints to an existing one.
pub async fn register(api: &Api<Node>, opts: &NodeOptions) -> Result<Node, AgentError> {
    let err = |source| AgentError::Register {
        node: opts.node_name.clone(),
        source,
    };
    let body = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": opts.node_name, "labels": labels(opts)},
        "spec": {"taints": taints(opts)},
    });
    let node: Node = serde_json::from_value(body).map_err(AgentError::Json)?;
    match api.create(&PostParams::default(), &node).await {
        Ok(n) => return Ok(n),
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(err(e)),
    }
    let existing = api.get(&opts.node_name).await.map_err(err)?;
    let mut have: Vec<Value> = existing
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .map(|t| {
            t.iter()
                .filter_map(|t| serde_json::to_value(t).ok())
                .collect()
        })
        .unwrap_or_default();
    for t in taints(opts) {
        if !have
            .iter()
            .any(|h| h["key"] == t["key"] && h["effect"] == t["effect"])
        {
            have.push(t);
        }
    }
    let patch = json!({"metadata": {"labels": labels(opts)}, "spec": {"taints": have}});
    api.patch(
        &opts.node_name,
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(err)
}

/// Facts the status is built from.
pub struct StatusInput<'a> {
    pub internal_ip: IpAddr,
    pub external_ip: Option<IpAddr>,
    pub hostname: &'a str,
    pub capacity: &'a Capacity,
    pub system: &'a SystemInfo,
    /// (memory, disk, pid) pressure.
    pub pressure: (bool, bool, bool),
    /// Pod networking is up, or not needed (no cluster CIDR). Like kubelet, the node is not Ready
    /// while its network plugin is not: pods started then would get no address.
    pub network_ready: bool,
    pub now: &'a str,
}

fn condition(
    prev: &Value,
    typ: &str,
    status: bool,
    reason: &str,
    message: &str,
    now: &str,
) -> Value {
    let s = if status { "True" } else { "False" };
    let since = prev["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == typ))
        .filter(|c| c["status"] == s)
        .map(|c| c["lastTransitionTime"].clone())
        .unwrap_or(json!(now));
    json!({
        "type": typ, "status": s, "reason": reason, "message": message,
        "lastHeartbeatTime": now, "lastTransitionTime": since,
    })
}

/// The Node status; `prev` is the current status (for transition times).
pub fn status(i: &StatusInput<'_>, prev: &Value) -> Value {
    let (mem, disk, pid) = i.pressure;
    let cap = json!({
        "cpu": i.capacity.cpu.to_string(),
        "memory": format!("{}Ki", i.capacity.memory_kib),
        "pods": i.capacity.pods.to_string(),
        "ephemeral-storage": format!("{}Ki", i.capacity.ephemeral_storage_bytes / 1024),
    });
    let mut addresses = vec![json!({"type": "InternalIP", "address": i.internal_ip.to_string()})];
    if let Some(ext) = i.external_ip {
        addresses.push(json!({"type": "ExternalIP", "address": ext.to_string()}));
    }
    addresses.push(json!({"type": "Hostname", "address": i.hostname}));
    let now = i.now;
    json!({
        "capacity": cap,
        "allocatable": cap,
        "addresses": addresses,
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {
            "machineID": i.system.machine_id,
            "systemUUID": i.system.system_uuid,
            "bootID": i.system.boot_id,
            "kernelVersion": i.system.kernel_version,
            "osImage": i.system.os_image,
            "containerRuntimeVersion": info::RUNTIME_VERSION,
            "kubeletVersion": info::KUBELET_VERSION,
            "kubeProxyVersion": info::KUBELET_VERSION,
            "operatingSystem": "linux",
            "architecture": i.system.architecture,
        },
        "conditions": [
            condition(prev, "MemoryPressure", mem,
                if mem { "KubeletHasInsufficientMemory" } else { "KubeletHasSufficientMemory" },
                if mem { "kubelet has insufficient memory available" } else { "kubelet has sufficient memory available" }, now),
            condition(prev, "DiskPressure", disk,
                if disk { "KubeletHasDiskPressure" } else { "KubeletHasNoDiskPressure" },
                if disk { "kubelet has disk pressure" } else { "kubelet has no disk pressure" }, now),
            condition(prev, "PIDPressure", pid,
                if pid { "KubeletHasInsufficientPID" } else { "KubeletHasSufficientPID" },
                if pid { "kubelet has insufficient PID available" } else { "kubelet has sufficient PID available" }, now),
            if i.network_ready {
                condition(prev, "Ready", true, "KubeletReady", "kubelet is posting ready status", now)
            } else {
                condition(prev, "Ready", false, "KubeletNotReady",
                    "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:the node has no spec.podCIDR yet", now)
            },
        ],
    })
}

/// True if `next` differs from `prev` in anything but the conditions' `lastHeartbeatTime`: only
/// the fields `next` sets are compared (others may be written by someone else).
pub fn changed(prev: &Value, next: &Value) -> bool {
    fn without_heartbeats(v: &Value) -> Value {
        let mut v = v.clone();
        if let Some(cs) = v.as_array_mut() {
            for c in cs {
                if let Some(o) = c.as_object_mut() {
                    o.remove("lastHeartbeatTime");
                }
            }
        }
        v
    }
    let Some(fields) = next.as_object() else {
        return true;
    };
    fields.iter().any(|(k, v)| {
        if k == "conditions" {
            without_heartbeats(v) != without_heartbeats(&prev[k])
        } else {
            *v != prev[k]
        }
    })
}

/// Writes the status through `nodes/status`.
pub async fn write_status(api: &Api<Node>, name: &str, status: &Value) -> Result<Node, AgentError> {
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": status})),
    )
    .await
    .map_err(|source| AgentError::NodeStatus {
        node: name.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_taints() {
        let mut o = NodeOptions::new("n1", "/tmp/x");
        o.control_plane = true;
        o.labels.push("zone=a".parse().unwrap());
        o.taints.push("dedicated=edge:NoSchedule".parse().unwrap());
        let l = labels(&o);
        assert_eq!(l["kubernetes.io/hostname"], "n1");
        assert_eq!(l["node-role.kubernetes.io/control-plane"], "true");
        assert_eq!(l["zone"], "a");
        assert_eq!(
            taints(&o),
            vec![json!({"key": "dedicated", "value": "edge", "effect": "NoSchedule"})]
        );
    }

    #[test]
    fn status_conditions_keep_transition_times() {
        let cap = Capacity {
            cpu: 2,
            memory_kib: 1024,
            ephemeral_storage_bytes: 4096,
            pods: 110,
        };
        let sys = info::system_info();
        let mut i = StatusInput {
            internal_ip: "10.0.0.2".parse().unwrap(),
            external_ip: None,
            hostname: "h",
            capacity: &cap,
            system: &sys,
            pressure: (false, false, false),
            network_ready: true,
            now: "t1",
        };
        let s1 = status(&i, &Value::Null);
        assert_eq!(s1["capacity"]["memory"], "1024Ki");
        assert_eq!(s1["nodeInfo"]["containerRuntimeVersion"], "youki://0.7.0");
        i.now = "t2";
        let s2 = status(&i, &s1);
        let ready = s2["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(ready["lastTransitionTime"], "t1");
        assert_eq!(ready["lastHeartbeatTime"], "t2");

        // Only a heartbeat time moved: unchanged. A condition flipping or an address: changed.
        assert!(!changed(&s1, &s2));
        let mut extra = s1.clone();
        extra["images"] = json!([{"names": ["x"]}]);
        assert!(!changed(&extra, &s2), "fields set by others are ignored");
        i.pressure = (false, true, false);
        assert!(changed(&s2, &status(&i, &s2)));
        i.pressure = (false, false, false);
        i.internal_ip = "10.0.0.3".parse().unwrap();
        assert!(changed(&s2, &status(&i, &s2)));
        assert!(changed(&Value::Null, &s2));
    }
}
