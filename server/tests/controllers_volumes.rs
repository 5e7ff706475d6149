//! The volume binder, the local-path provisioner and the scheduler's volume rules on the
//! in-process control plane with simulated nodes, through the real kubectl: the default class
//! and its admission, WaitForFirstConsumer provisioning on the pod's node, a second pod of the
//! same claim sent back to that node, Immediate claims holding their pods until bound, static
//! volumes with selectors and pre-binding, Retain and Delete reclaim.

mod support;

use r3s_server::controllers::ControllerOptions;
use r3s_server::controllers::localpath::LocalPath;

fn pod(name: &str, claim: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default}}
spec:
  containers: [{{name: c, image: registry.example/c:1, volumeMounts: [{{name: d, mountPath: /d}}]}}]
  volumes: [{{name: d, persistentVolumeClaim: {{claimName: {claim}}}}}]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_are_bound_provisioned_scheduled_and_reclaimed() {
    if !support::have_kubectl() {
        return;
    }
    let storage = tempfile::tempdir().expect("tmp");
    let opts = ControllerOptions {
        local_storage: Some(LocalPath {
            path: storage.path().to_path_buf(),
            own_node: Some("sim-b".into()),
        }),
        ..ControllerOptions::default()
    };
    let cluster = support::start(&["sim-a", "sim-b"], opts).await;

    // The default class appears; a claim without a class gets it.
    cluster
        .eventually(&["get", "storageclass"], |out| {
            out.contains("local-path (default)")
        })
        .await;
    let claim = cluster.write(
        "claim.yaml",
        r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data, namespace: default}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
"#,
    );
    cluster.ok(&["apply", "-f", &claim]).await;
    let class = cluster
        .ok(&[
            "get",
            "pvc",
            "data",
            "-o",
            "jsonpath={.spec.storageClassName}",
        ])
        .await;
    assert_eq!(class, "local-path");

    // Only sim-b is schedulable: the pod goes there, and so does its volume.
    cluster.ok(&["cordon", "sim-a"]).await;
    cluster
        .ok(&["apply", "-f", &cluster.write("p1.yaml", &pod("p1", "data"))])
        .await;
    let out = cluster
        .eventually(
            &[
                "get",
                "pvc",
                "data",
                "-o",
                "jsonpath={.status.phase} {.spec.volumeName}",
            ],
            |o| o.starts_with("Bound "),
        )
        .await;
    let volume = out.split_whitespace().nth(1).expect("volume").to_string();
    let uid = cluster
        .ok(&["get", "pvc", "data", "-o", "jsonpath={.metadata.uid}"])
        .await;
    assert_eq!(volume, format!("pvc-{uid}"));
    let affinity = cluster
        .ok(&[
            "get",
            "pv",
            &volume,
            "-o",
            "jsonpath={.spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].values[0]} {.spec.hostPath.path}",
        ])
        .await;
    let dir = storage.path().join(format!("{volume}_default_data"));
    assert_eq!(affinity, format!("sim-b {}", dir.display()));

    // With sim-a open again and sim-b closed, a second pod of the claim still must go to sim-b:
    // it waits, with upstream's reason.
    cluster.ok(&["uncordon", "sim-a"]).await;
    cluster.ok(&["cordon", "sim-b"]).await;
    cluster
        .ok(&["apply", "-f", &cluster.write("p2.yaml", &pod("p2", "data"))])
        .await;
    cluster
        .eventually(
            &[
                "get",
                "pod",
                "p2",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].message}",
            ],
            |m| m.contains("volume node affinity conflict"),
        )
        .await;
    cluster.ok(&["uncordon", "sim-b"]).await;
    cluster
        .eventually(
            &["get", "pod", "p2", "-o", "jsonpath={.spec.nodeName}"],
            |n| n == "sim-b",
        )
        .await;

    // Deleting the claim (pods gone) deletes the volume and its directory on the own node.
    std::fs::create_dir_all(dir.join("x")).expect("data");
    cluster
        .ok(&["delete", "pod", "p1", "p2", "--grace-period=0", "--force"])
        .await;
    cluster.ok(&["delete", "pvc", "data"]).await;
    cluster
        .eventually(&["get", "pv", "-o", "name"], |o| !o.contains(&volume))
        .await;
    support::wait_for(
        "the volume's directory removed",
        std::time::Duration::from_secs(30),
        || {
            let gone = !dir.exists();
            async move { gone }
        },
    )
    .await;

    // An Immediate claim holds its pod until a volume is there; a selector and a pre-bound
    // volume decide which volume it gets; Retain leaves the volume Released.
    let statics = cluster.write(
        "static.yaml",
        r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: fast, namespace: default}
spec:
  storageClassName: manual
  accessModes: [ReadWriteOnce]
  selector: {matchLabels: {speed: fast}}
  resources: {requests: {storage: 1Gi}}
"#,
    );
    cluster.ok(&["apply", "-f", &statics]).await;
    cluster
        .ok(&["apply", "-f", &cluster.write("p3.yaml", &pod("p3", "fast"))])
        .await;
    cluster
        .eventually(
            &[
                "get",
                "pod",
                "p3",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].message}",
            ],
            |m| m.contains("pod has unbound immediate PersistentVolumeClaims"),
        )
        .await;
    let volumes = cluster.write(
        "volumes.yaml",
        r#"
apiVersion: v1
kind: PersistentVolume
metadata: {name: slow-small, labels: {speed: slow}}
spec:
  storageClassName: manual
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  hostPath: {path: /tmp/r3st-slow}
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: fast-big, labels: {speed: fast}}
spec:
  storageClassName: manual
  capacity: {storage: 5Gi}
  accessModes: [ReadWriteOnce, ReadWriteMany]
  hostPath: {path: /tmp/r3st-fast}
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: reserved}
spec:
  storageClassName: manual
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  claimRef: {namespace: default, name: later}
  hostPath: {path: /tmp/r3st-reserved}
"#,
    );
    cluster.ok(&["apply", "-f", &volumes]).await;
    cluster
        .eventually(
            &[
                "get",
                "pvc",
                "fast",
                "-o",
                "jsonpath={.status.phase} {.spec.volumeName} {.status.capacity.storage}",
            ],
            |o| o == "Bound fast-big 5Gi",
        )
        .await;
    cluster
        .eventually(
            &["get", "pod", "p3", "-o", "jsonpath={.spec.nodeName}"],
            |n| !n.is_empty(),
        )
        .await;
    cluster
        .eventually(
            &[
                "get",
                "pv",
                "slow-small",
                "reserved",
                "-o",
                "jsonpath={.items[*].status.phase}",
            ],
            |o| o == "Available Available",
        )
        .await;
    let later = cluster.write(
        "later.yaml",
        r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: later, namespace: default}
spec:
  storageClassName: manual
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
"#,
    );
    cluster.ok(&["apply", "-f", &later]).await;
    cluster
        .eventually(
            &[
                "get",
                "pvc",
                "later",
                "-o",
                "jsonpath={.status.phase} {.spec.volumeName}",
            ],
            |o| o == "Bound reserved",
        )
        .await;
    cluster
        .ok(&["delete", "pod", "p3", "--grace-period=0", "--force"])
        .await;
    cluster.ok(&["delete", "pvc", "fast"]).await;
    cluster
        .eventually(
            &["get", "pv", "fast-big", "-o", "jsonpath={.status.phase}"],
            |o| o == "Released",
        )
        .await;
    // A Delete volume r3s cannot delete (a static hostPath) is Failed, with the reason.
    cluster
        .ok(&[
            "patch",
            "pv",
            "reserved",
            "-p",
            r#"{"spec":{"persistentVolumeReclaimPolicy":"Delete"}}"#,
        ])
        .await;
    cluster.ok(&["delete", "pvc", "later"]).await;
    let out = cluster
        .eventually(
            &[
                "get",
                "pv",
                "reserved",
                "-o",
                "jsonpath={.status.phase}: {.status.message}",
            ],
            |o| o.starts_with("Failed"),
        )
        .await;
    assert!(out.contains("no deletable volume plugin matched"), "{out}");
}
