//! Pod priority and preemption against two simulated nodes, driven with the real kubectl:
//! PriorityClasses (the built-in ones, globalDefault, the rules a class must follow), priority
//! admission (class → `spec.priority`, unknown class refused), and the scheduler evicting the
//! cheapest lower-priority victims for a pod that fits nowhere (nominatedNodeName, a Preempted
//! event, graceful deletion), while `preemptionPolicy: Never` evicts nothing.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use r3s_server::controllers::ControllerOptions;

const CLASSES: &str = "
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: low}
value: 100
globalDefault: true
description: everything without a class
---
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: mid-never}
value: 500
preemptionPolicy: Never
---
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: mid}
value: 500
---
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: high}
value: 1000
";

fn pod_yaml(name: &str, cpu: &str, class: Option<&str>, node: Option<&str>) -> String {
    let class = class.map_or(String::new(), |c| format!("  priorityClassName: {c}\n"));
    let node = node.map_or(String::new(), |n| {
        format!("  nodeSelector: {{kubernetes.io/hostname: {n}}}\n")
    });
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n{class}{node}  containers:\n  - name: c\n    image: registry.example/app:1\n    resources: {{requests: {{cpu: \"{cpu}\"}}}}\n"
    )
}

async fn node_of(pods: &Api<Pod>, name: &str) -> Option<String> {
    pods.get(name)
        .await
        .ok()?
        .spec?
        .node_name
        .filter(|n| !n.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_classes_admission_and_preemption() {
    if !support::have_kubectl() {
        return;
    }
    let cluster = support::start(&["sim-a", "sim-b"], ControllerOptions::default()).await;

    // The built-in classes exist from the start.
    let builtin = cluster
        .ok(&["get", "priorityclasses", "--no-headers"])
        .await;
    assert!(
        builtin
            .lines()
            .any(|l| l.split_whitespace().take(3).collect::<Vec<_>>()
                == ["system-cluster-critical", "2000000000", "false"]),
        "{builtin}"
    );
    assert!(
        builtin.contains("system-node-critical") && builtin.contains("2000001000"),
        "{builtin}"
    );

    let classes = cluster.write("classes.yaml", CLASSES);
    cluster.ok(&["apply", "-f", &classes]).await;
    let table = cluster.ok(&["get", "pc", "low", "mid-never"]).await;
    assert!(
        table.contains("GLOBAL-DEFAULT") && table.contains("PREEMPTIONPOLICY"),
        "{table}"
    );
    assert!(table.contains("Never"), "{table}");

    // The class rules, with upstream's messages.
    let second_default = cluster.write(
        "default2.yaml",
        "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: other}\nvalue: 5\nglobalDefault: true\n",
    );
    let (ok, _, err) = cluster.kubectl(&["create", "-f", &second_default]).await;
    assert!(!ok, "a second default was accepted");
    assert!(
        err.contains("PriorityClass low is already marked as default. Only one default can exist"),
        "{err}"
    );
    let reserved = cluster.write(
        "reserved.yaml",
        "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: system-mine}\nvalue: 2000000000\n",
    );
    let (ok, _, err) = cluster.kubectl(&["create", "-f", &reserved]).await;
    assert!(!ok);
    // Upstream checks the value bound only for names outside the reserved prefix.
    assert!(
        err.contains("metadata.name: Forbidden: priority class names with 'system-' prefix are reserved for system use only. error: system-mine is not a known system priority class")
            && !err.contains("maximum allowed value"),
        "{err}"
    );
    let (ok, _, err) = cluster
        .kubectl(&[
            "patch",
            "pc",
            "high",
            "--type=merge",
            "-p",
            "{\"value\": 7}",
        ])
        .await;
    assert!(!ok);
    assert!(err.contains("may not be changed in an update"), "{err}");

    // Admission: an unknown class is refused, no class takes the global default.
    let unknown = cluster.write("unknown.yaml", &pod_yaml("lost", "1", Some("nope"), None));
    let (ok, _, err) = cluster.kubectl(&["create", "-f", &unknown]).await;
    assert!(!ok);
    assert!(
        err.contains("pods \"lost\" is forbidden: no PriorityClass with name nope was found"),
        "{err}"
    );

    // sim-a: a 3-CPU pod of the default class plus a 1-CPU pod of mid; sim-b: 2 + 2 CPUs of low.
    for (name, cpu, class, node) in [
        ("a-low", "3", None, "sim-a"),
        ("a-mid", "1", Some("mid"), "sim-a"),
        ("b-low-1", "2", None, "sim-b"),
        ("b-low-2", "2", None, "sim-b"),
    ] {
        let file = cluster.write(
            &format!("{name}.yaml"),
            &pod_yaml(name, cpu, class, Some(node)),
        );
        cluster.ok(&["create", "-f", &file]).await;
    }
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    for name in ["a-low", "a-mid", "b-low-1", "b-low-2"] {
        support::wait_for(
            &format!("{name} bound"),
            Duration::from_secs(20),
            || async { node_of(&pods, name).await.is_some() },
        )
        .await;
    }
    let spec = pods.get("a-low").await.expect("a-low").spec.expect("spec");
    assert_eq!(spec.priority, Some(100));
    assert_eq!(spec.priority_class_name.as_deref(), Some("low"));
    assert_eq!(
        spec.preemption_policy.as_deref(),
        Some("PreemptLowerPriority")
    );

    // Never: the pod waits and says why, nobody is evicted.
    let never = cluster.write(
        "never.yaml",
        &pod_yaml("patient", "3", Some("mid-never"), None),
    );
    cluster.ok(&["create", "-f", &never]).await;
    support::wait_for(
        "patient's FailedScheduling explanation",
        Duration::from_secs(20),
        || async {
            let (_, out, _) = cluster.kubectl(&["describe", "pod", "patient"]).await;
            out.contains("preemption: not eligible due to preemptionPolicy=Never.")
        },
    )
    .await;
    assert_eq!(
        pods.get("patient")
            .await
            .expect("patient")
            .spec
            .and_then(|s| s.priority),
        Some(500)
    );
    let all = cluster.ok(&["get", "pods", "--no-headers"]).await;
    assert_eq!(all.lines().count(), 5, "{all}");

    // A high-priority pod: on sim-a one victim of priority 100 suffices (a-mid is spared), on
    // sim-b it would take two, so a-low goes and the pod is nominated to sim-a.
    let urgent = cluster.write("urgent.yaml", &pod_yaml("urgent", "3", Some("high"), None));
    cluster.ok(&["create", "-f", &urgent]).await;
    support::wait_for("urgent bound", Duration::from_secs(30), || async {
        node_of(&pods, "urgent").await.is_some()
    })
    .await;
    assert_eq!(node_of(&pods, "urgent").await.as_deref(), Some("sim-a"));
    let urgent_pod = pods.get("urgent").await.expect("urgent");
    assert_eq!(
        urgent_pod
            .status
            .as_ref()
            .and_then(|s| s.nominated_node_name.as_deref()),
        Some("sim-a")
    );
    assert!(
        pods.get_opt("a-low").await.expect("get").is_none(),
        "victim left"
    );
    for survivor in ["a-mid", "b-low-1", "b-low-2"] {
        assert!(
            pods.get_opt(survivor).await.expect("get").is_some(),
            "{survivor} was evicted"
        );
    }
    let events = cluster
        .ok(&[
            "get",
            "events",
            "--field-selector",
            "reason=Preempted",
            "-o",
            "custom-columns=OBJ:.involvedObject.name,MSG:.message",
            "--no-headers",
        ])
        .await;
    let uid = urgent_pod.metadata.uid.unwrap_or_default();
    assert!(
        events.contains("a-low")
            && events.contains(&format!("Preempted by pod {uid} on node sim-a")),
        "{events}"
    );
    // The Never pod still waits: it must not have been placed in the freed room before `urgent`.
    assert!(node_of(&pods, "patient").await.is_none());
}
