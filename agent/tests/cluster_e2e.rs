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
//! unready and returns when it is ready again; restarting an agent keeps its pods running (same
//! container, same address) and keeps TCP connections open, both one from its host across the
//! overlay and one from another host to its own pod; deleting a Node removes its route,
//! neighbour and FDB entry on the others. (`readopt_e2e.rs` checks re-adoption in detail.)
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
use std::io::{Read, Write};
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
        eventually(
            &format!("{p1} to reach {ip}"),
            Duration::from_secs(30),
            || c.logs(),
            || {
                let out = c.exec_in_pod(&p1, &format!("ping -c 1 -W 2 {ip}"));
                out.status.success().then_some(())
            },
        );
        let body = c.exec_in_pod_must(&p1, &format!("wget -q -O - http://{ip}:8080/"));
        let host = c.exec_in_pod_must(&pods.iter().find(|p| &p.2 == ip).unwrap().0, "hostname");
        assert_eq!(body.trim(), host.trim());
    }
    let after = c.link_packets(0, VXLAN);
    assert!(
        after.0 > before.0 && after.1 > before.1,
        "VXLAN counters did not grow: {before:?} → {after:?}"
    );
    let names: BTreeSet<String> = pods.iter().map(|p| p.0.clone()).collect();
    let node_of = |pod: &str| pods.iter().find(|p| p.0 == pod).unwrap().1.clone();

    // ClusterIP, from a pod on every node: spread over endpoints on more than one node. Running
    // is not Ready: first wait until every node's pod is an endpoint.
    eventually(
        "every web pod in the Service's endpoints",
        Duration::from_secs(60),
        || c.logs(),
        || {
            let out = c.kubectl_out(&[
                "get",
                "endpoints",
                "web",
                "-o",
                "jsonpath={.subsets[*].addresses[*].nodeName}",
            ]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let nodes: BTreeSet<&str> = text.split_whitespace().collect();
            (nodes.len() == n).then_some(())
        },
    );
    let cluster_ip = c
        .kubectl_must(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"])
        .trim()
        .to_owned();
    for client in [&p1, &p2, &p3] {
        let out = c.exec_in_pod_must(
            client,
            &format!("for i in $(seq 15); do wget -q -O - http://{cluster_ip}/; done"),
        );
        let answered: BTreeSet<&str> = out.lines().map(str::trim).collect();
        assert!(
            answered.iter().all(|a| names.contains(*a)),
            "{client} got {answered:?}"
        );
        let nodes: BTreeSet<String> = answered.iter().map(|a| node_of(a)).collect();
        assert!(nodes.len() > 1, "{client}: all answers from {nodes:?}");
    }

    // NodePort, from another host (not a pod): host 3 → host 1, host 1 → host 2.
    for (from, to) in [(2, 0), (0, 1)] {
        let url = format!("http://{}:30080/", c.hosts[to].ip);
        let out = c.on_host(from, &["curl", "-sS", "--max-time", "10", &url]);
        assert!(
            out.status.success(),
            "{url} from host{}: {}",
            from + 1,
            cluster::text(&out)
        );
        let body = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(names.contains(&body), "{body}");
    }

    // LoadBalancer: the ingress is the nodes' IPs, served on the Service port at each of them.
    let want: BTreeSet<String> = c.hosts.iter().map(|h| h.ip.clone()).collect();
    eventually(
        "web-lb's ingress to list every node IP",
        Duration::from_secs(60),
        || c.logs(),
        || {
            let out = c.kubectl_must(&[
                "get",
                "svc",
                "web-lb",
                "-o",
                "jsonpath={.status.loadBalancer.ingress[*].ip}",
            ]);
            let got: BTreeSet<String> = out.split_whitespace().map(str::to_owned).collect();
            (got == want).then_some(())
        },
    );
    let url = format!("http://{}:8081/", c.hosts[2].ip);
    let out = c.on_host(1, &["curl", "-sS", "--max-time", "10", &url]);
    assert!(
        out.status.success(),
        "{url} from host2: {}",
        cluster::text(&out)
    );
    assert!(names.contains(String::from_utf8_lossy(&out.stdout).trim()));

    // DNS from inside a pod: its resolv.conf names the cluster DNS and the search path.
    let resolv = c.exec_in_pod_must(&p2, "cat /etc/resolv.conf");
    assert!(
        resolv.contains("nameserver 10.43.0.10") && resolv.contains("default.svc.cluster.local"),
        "{resolv}"
    );
    let lookup = |name: &str| c.exec_in_pod_must(&p2, &format!("nslookup {name}"));
    let out = lookup("web.default.svc.cluster.local");
    assert!(out.contains(&cluster_ip), "{out}");
    let out = lookup("web-h.default.svc.cluster.local");
    for ip in [&ip1, &ip2, &ip3] {
        assert!(out.contains(ip.as_str()), "headless: {ip} missing in {out}");
    }
    let pod_name = format!("{}.default.pod.cluster.local", ip3.replace('.', "-"));
    let out = lookup(&pod_name);
    assert!(out.contains(&format!("Address: {ip3}")), "{out}");
    let out = lookup("www.outside.test");
    assert!(
        out.contains("203.0.113.7"),
        "forwarded to the test's upstream: {out}"
    );

    // An endpoint goes when its pod turns unready, and comes back.
    let endpoints = || {
        c.kubectl_must(&[
            "get",
            "endpoints",
            "web",
            "-o",
            "jsonpath={.subsets[*].addresses[*].ip}",
        ])
    };
    c.exec_in_pod_must(&p3, "rm /tmp/ready");
    eventually(
        "the unready pod's endpoint to go",
        Duration::from_secs(60),
        || c.logs(),
        || {
            let e = endpoints();
            (!e.contains(&ip3) && e.contains(&ip1)).then_some(())
        },
    );
    c.exec_in_pod_must(&p3, "touch /tmp/ready");
    eventually(
        "the ready pod's endpoint to return",
        Duration::from_secs(60),
        || c.logs(),
        || endpoints().contains(&ip3).then_some(()),
    );

    // Restarting host 2's agent (SIGTERM, then start): its pod keeps running (same container,
    // same address), a TCP connection from host 2 across the overlay (to the pod on host 3) and
    // one from host 1 to host 2's own pod, both opened before the restart, still work after.
    let old_container = pods.iter().find(|p| p.0 == p2).unwrap().3.clone();
    let open = |ns: &str, target: String| {
        let mut conn = cluster::in_netns(ns, move || std::net::TcpStream::connect(target).unwrap());
        conn.write_all(b"GET / HTTP/1.0\r\n").unwrap();
        conn
    };
    let mut conn = open(&c.hosts[1].ns.0, format!("{ip3}:8080"));
    let mut to_own = open(&c.hosts[0].ns.0, format!("{ip2}:8080"));
    let status = c.signal_agent(1, nix::sys::signal::Signal::SIGTERM);
    assert!(
        status.is_some_and(|s| s.success()),
        "r3s-agent on host2 did not stop cleanly: {status:?}"
    );
    c.start_agent(1);
    c.wait_node_ready(1);
    for (conn, pod) in [(&mut conn, &p3), (&mut to_own, &p2)] {
        conn.write_all(b"\r\n").unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).unwrap();
        assert!(answer.contains(pod.as_str()), "{answer}");
    }
    let again = eventually(
        "host2's web pod Running and re-adopted",
        Duration::from_secs(120),
        || c.logs(),
        || {
            c.pods("app=web")
                .into_iter()
                .find(|p| p.1 == c.hosts[1].node)
        },
    );
    assert_eq!(
        again.3, old_container,
        "the agent restart replaced the container"
    );
    assert_eq!(
        again.2, ip2,
        "the pod's address changed across an agent restart"
    );

    // Deleting node 3 removes its route, neighbour and FDB entry on the others.
    let cidr3 = c.kubectl_must(&[
        "get",
        "node",
        &c.hosts[2].node,
        "-o",
        "jsonpath={.spec.podCIDR}",
    ]);
    let mac3 = c.kubectl_must(&[
        "get",
        "node",
        &c.hosts[2].node,
        "-o",
        "jsonpath={.metadata.annotations.flannel\\.alpha\\.coreos\\.com/backend-data}",
    ]);
    let mac3: serde_json::Value = serde_json::from_str(&mac3).unwrap();
    let mac3 = mac3["VtepMAC"].as_str().unwrap().to_ascii_lowercase();
    let gw3 = cidr3.trim().trim_end_matches("/24").to_owned();
    let entries = |c: &Cluster, i: usize| {
        (
            c.hosts[i].ns.ip(&["route", "show", "dev", VXLAN]),
            c.hosts[i].ns.ip(&["neigh", "show", "dev", VXLAN]),
            cluster::must(&[
                "bridge",
                "-n",
                &c.hosts[i].ns.0,
                "fdb",
                "show",
                "dev",
                VXLAN,
            ]),
        )
    };
    for i in [0, 1] {
        let (routes, neigh, fdb) = entries(&c, i);
        assert!(routes.contains(cidr3.trim()), "host{}: {routes}", i + 1);
        assert!(neigh.contains(&gw3), "host{}: {neigh}", i + 1);
        assert!(fdb.contains(&mac3), "host{}: {fdb}", i + 1);
    }
    assert!(c.stop_host(2), "r3s-agent on host3 did not stop cleanly");
    c.kubectl_must(&["delete", "node", &c.hosts[2].node]);
    for i in [0, 1] {
        eventually(
            &format!("host{} to forget node 3", i + 1),
            Duration::from_secs(60),
            || c.logs(),
            || {
                let (routes, neigh, fdb) = entries(&c, i);
                (!routes.contains(cidr3.trim()) && !neigh.contains(&gw3) && !fdb.contains(&mac3))
                    .then_some(())
            },
        );
    }
}
