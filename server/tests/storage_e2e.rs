//! PersistentVolumeClaims end to end through the real binary, as root: `r3s-server` (API, volume
//! binder, local-path provisioner, scheduler, in-process agent) on a fresh data dir, a real
//! `docker-registry` on 127.0.0.1 with a busybox-static image, and the real kubectl.
//!
//! A claim with no class gets `local-path`, a pod writes into it, the claim is Bound to a
//! `pvc-<uid>` hostPath volume under `--default-local-storage-path` with node affinity to the
//! node, a second pod reads the file back, and deleting the claim deletes the volume and its
//! directory. A static hostPath volume binds a matching claim (`kubectl get pv,pvc` shows both
//! Bound with upstream's columns) and is Released when the claim goes; a claim that fits no
//! volume stays Pending with an event; a StatefulSet's claims are provisioned and its pods run.
//!
//! What the server creates on the host (the `r3s0` bridge, nftables tables, the DNS address) is
//! removed by a guard when the test created it, on failure too; everything else lives in a temp
//! dir.

#![allow(clippy::unwrap_used)]

#[path = "../../images/tests/support/mod.rs"]
mod support;

#[path = "support/binary.rs"]
mod binary;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use binary::{KUBECTL, Server, eventually, free_port, kubectl};
use oci_client::secrets::RegistryAuth;
use support::{Registry, require};

/// Removes the host-side network objects the server made, if they were not there before.
struct HostNetworkGuard {
    links: Vec<(&'static str, bool)>,
    tables: Vec<(&'static str, bool)>,
    dns_on_lo: bool,
}

impl HostNetworkGuard {
    fn new() -> Self {
        HostNetworkGuard {
            links: ["r3s0", "r3s-dns"]
                .into_iter()
                .map(|l| (l, link_exists(l)))
                .collect(),
            tables: ["r3s-masq", "r3s-proxy"]
                .into_iter()
                .map(|t| (t, nft_table_exists(t)))
                .collect(),
            dns_on_lo: dns_on_lo(),
        }
    }
}

impl Drop for HostNetworkGuard {
    fn drop(&mut self) {
        for (link, existed) in &self.links {
            if !existed && link_exists(link) {
                let _ = Command::new("ip").args(["link", "del", link]).status();
            }
        }
        for (table, existed) in &self.tables {
            if !existed && nft_table_exists(table) {
                let _ = Command::new("nft")
                    .args(["delete", "table", "ip", table])
                    .status();
            }
        }
        if !self.dns_on_lo && dns_on_lo() {
            let _ = Command::new("ip")
                .args(["addr", "del", "10.43.0.10/32", "dev", "lo"])
                .status();
        }
    }
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

fn dns_on_lo() -> bool {
    Command::new("ip")
        .args(["-o", "addr", "show", "dev", "lo"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(" 10.43.0.10/32 "))
}

fn nft_table_exists(name: &str) -> bool {
    Command::new("nft")
        .args(["list", "table", "ip", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `kubectl apply` of `yaml` (written to a file in `dir`).
fn apply(dir: &Path, name: &str, yaml: &str) {
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    let (ok, out, err) = kubectl(dir, &["apply", "-f", file.to_str().unwrap()]);
    assert!(ok, "apply {name}: {out}{err}");
}

/// `kubectl get … -o jsonpath=<path>`, trimmed, when kubectl succeeds.
fn get(dir: &Path, what: &[&str], path: &str) -> Option<String> {
    let jsonpath = format!("jsonpath={path}");
    let mut args: Vec<&str> = vec!["get"];
    args.extend_from_slice(what);
    args.extend_from_slice(&["-o", &jsonpath]);
    let (ok, out, _) = kubectl(dir, &args);
    ok.then(|| out.trim().to_owned())
}

fn pod_yaml(name: &str, image: &str, claim: &str, script: &str, read_only: bool) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "{script}"]
    volumeMounts:
    - name: data
      mountPath: /data
  volumes:
  - name: data
    persistentVolumeClaim:
      claimName: {claim}
      readOnly: {read_only}
"#
    )
}

fn wait_phase(dir: &Path, pod: &str, phase: &str) {
    eventually(
        dir,
        &format!("pod {pod} {phase}"),
        Duration::from_secs(120),
        || {
            let got = get(dir, &["pod", pod], "{.status.phase}")?;
            assert!(
                !(got == "Failed" && phase != "Failed"),
                "pod {pod} failed: {:?}",
                kubectl(dir, &["describe", "pod", pod])
            );
            (got == phase).then_some(())
        },
    );
}

fn delete_pod(dir: &Path, pod: &str) {
    let (ok, _, err) = kubectl(dir, &["delete", "pod", pod, "--wait=true", "--timeout=60s"]);
    assert!(ok, "delete pod {pod}: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_bind_provision_mount_and_reclaim() {
    if !require("root", support::is_root())
        || !require("docker-registry", support::have_registry())
        || !require("busybox-static", support::have_busybox())
        || !require("kubectl", Path::new(KUBECTL).exists())
        || !require("no r3s0 bridge on this host", !link_exists("r3s0"))
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("home")).unwrap();
    let storage = dir.join("storage");

    let reg = Registry::start();
    let img = support::busybox_image(&["sh", "echo", "cat", "sleep", "touch", "hostname"], &[]);
    reg.push("busybox", "1", &img, &RegistryAuth::Anonymous)
        .await;
    let image = format!("{}/busybox:1", reg.addr);
    let registries = binary::plain_http_mirror(dir, &reg.addr);

    let _net = HostNetworkGuard::new();
    let node = format!("r3st-pv-{}", std::process::id());
    let mut cmd = binary::command(dir, free_port(), &node);
    cmd.env("RUST_LOG", "info")
        .args(["--node-ip", "127.0.0.1", "--private-registry"])
        .arg(&registries)
        .arg("--default-local-storage-path")
        .arg(&storage);
    let server = Server::spawn(cmd, &dir.join("server.log"), Duration::from_secs(120));

    eventually(dir, "the node Ready", Duration::from_secs(90), || {
        let ready = get(
            dir,
            &["node", &node],
            "{.status.conditions[?(@.type==\"Ready\")].status}",
        )?;
        (ready == "True").then_some(())
    });

    // The default class, as k3s ships it.
    let class = eventually(dir, "the local-path class", Duration::from_secs(30), || {
        get(
            dir,
            &["storageclass", "local-path"],
            "{.provisioner} {.volumeBindingMode} {.reclaimPolicy} {.metadata.annotations.storageclass\\.kubernetes\\.io/is-default-class}",
        )
    });
    assert_eq!(
        class,
        "rancher.io/local-path WaitForFirstConsumer Delete true"
    );
    let (ok, out, _) = kubectl(dir, &["get", "storageclass"]);
    assert!(ok && out.contains("local-path (default)"), "{out}");

    // A claim with no class gets local-path and waits for its first consumer.
    apply(
        dir,
        "claim",
        r#"apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: data
spec:
  accessModes: ["ReadWriteOnce"]
  resources:
    requests:
      storage: 64Mi
"#,
    );
    assert_eq!(
        get(dir, &["pvc", "data"], "{.spec.storageClassName}").as_deref(),
        Some("local-path")
    );
    eventually(
        dir,
        "the WaitForFirstConsumer event",
        Duration::from_secs(30),
        || {
            let (ok, out, _) = kubectl(
                dir,
                &[
                    "get",
                    "events",
                    "--field-selector",
                    "involvedObject.name=data",
                ],
            );
            (ok && out.contains("WaitForFirstConsumer")).then_some(())
        },
    );
    assert_eq!(
        get(dir, &["pvc", "data"], "{.status.phase}").as_deref(),
        Some("Pending")
    );

    // A pod writes into it.
    apply(
        dir,
        "writer",
        &pod_yaml("writer", &image, "data", "echo hello-pv > /data/f", false),
    );
    wait_phase(dir, "writer", "Succeeded");
    let uid = get(dir, &["pvc", "data"], "{.metadata.uid}").unwrap();
    let volume = format!("pvc-{uid}");
    let bound = get(
        dir,
        &["pvc", "data"],
        "{.status.phase} {.spec.volumeName} {.status.capacity.storage} {.status.accessModes[0]}",
    )
    .unwrap();
    assert_eq!(bound, format!("Bound {volume} 64Mi ReadWriteOnce"));
    let pv = get(
        dir,
        &["pv", &volume],
        "{.status.phase} {.spec.claimRef.name} {.spec.hostPath.path} {.spec.hostPath.type} {.spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].values[0]} {.spec.persistentVolumeReclaimPolicy}",
    )
    .unwrap();
    let path = storage.join(format!("{volume}_default_data"));
    assert_eq!(
        pv,
        format!(
            "Bound data {} DirectoryOrCreate {node} Delete",
            path.display()
        )
    );
    assert_eq!(
        std::fs::read_to_string(path.join("f")).unwrap(),
        "hello-pv\n"
    );

    // A new pod with the same claim reads it back; a read-only mount refuses writes.
    delete_pod(dir, "writer");
    apply(
        dir,
        "reader",
        &pod_yaml(
            "reader",
            &image,
            "data",
            "cat /data/f; touch /data/g 2>/dev/null && echo writable || echo read-only",
            true,
        ),
    );
    wait_phase(dir, "reader", "Succeeded");
    let (ok, out, err) = kubectl(dir, &["logs", "reader"]);
    assert!(ok, "{err}");
    assert_eq!(out, "hello-pv\nread-only\n");
    delete_pod(dir, "reader");

    // Deleting the claim deletes the volume and its data (reclaim policy Delete).
    let (ok, _, err) = kubectl(dir, &["delete", "pvc", "data"]);
    assert!(ok, "{err}");
    eventually(dir, "the volume deleted", Duration::from_secs(60), || {
        let (ok, _, err) = kubectl(dir, &["get", "pv", &volume]);
        (!ok && err.contains("NotFound")).then_some(())
    });
    assert!(!path.exists(), "{} still exists", path.display());

    // A static hostPath volume and a claim that fits it.
    let static_dir = dir.join("static");
    apply(
        dir,
        "static",
        &format!(
            r#"apiVersion: v1
kind: PersistentVolume
metadata:
  name: static-pv
  labels:
    kind: static
spec:
  storageClassName: manual
  capacity:
    storage: 1Gi
  accessModes: ["ReadWriteOnce"]
  persistentVolumeReclaimPolicy: Retain
  hostPath:
    path: {}
    type: DirectoryOrCreate
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: static-claim
spec:
  storageClassName: manual
  accessModes: ["ReadWriteOnce"]
  selector:
    matchLabels:
      kind: static
  resources:
    requests:
      storage: 500Mi
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: too-big
spec:
  storageClassName: manual
  accessModes: ["ReadWriteOnce"]
  resources:
    requests:
      storage: 5Gi
"#,
            static_dir.display()
        ),
    );
    eventually(
        dir,
        "the static claim Bound",
        Duration::from_secs(60),
        || {
            let got = get(dir, &["pvc", "static-claim"], "{.status.phase}")?;
            (got == "Bound").then_some(())
        },
    );
    let (ok, out, err) = kubectl(dir, &["get", "pv,pvc"]);
    assert!(ok, "{err}");
    let header_pv = out.lines().next().unwrap_or_default();
    for column in [
        "NAME",
        "CAPACITY",
        "ACCESS MODES",
        "RECLAIM POLICY",
        "STATUS",
        "CLAIM",
        "STORAGECLASS",
    ] {
        assert!(header_pv.contains(column), "{out}");
    }
    let row = |prefix: &str| {
        out.lines()
            .find(|l| l.starts_with(prefix))
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_else(|| panic!("no {prefix} row in {out}"))
    };
    assert_eq!(
        row("persistentvolume/static-pv")[1..7],
        [
            "1Gi",
            "RWO",
            "Retain",
            "Bound",
            "default/static-claim",
            "manual"
        ],
        "{out}"
    );
    assert_eq!(
        row("persistentvolumeclaim/static-claim")[1..6],
        ["Bound", "static-pv", "1Gi", "RWO", "manual"],
        "{out}"
    );
    assert_eq!(row("persistentvolumeclaim/too-big")[1], "Pending", "{out}");
    eventually(
        dir,
        "an event on the claim that fits nothing",
        Duration::from_secs(30),
        || {
            let (ok, out, _) = kubectl(
                dir,
                &[
                    "get",
                    "events",
                    "--field-selector",
                    "involvedObject.name=too-big",
                ],
            );
            (ok && out.contains("storageclass.storage.k8s.io \"manual\" not found")).then_some(())
        },
    );

    // Retain: the volume is Released, its data kept.
    let (ok, _, err) = kubectl(dir, &["delete", "pvc", "static-claim"]);
    assert!(ok, "{err}");
    eventually(
        dir,
        "the static volume Released",
        Duration::from_secs(60),
        || {
            let got = get(dir, &["pv", "static-pv"], "{.status.phase}")?;
            (got == "Released").then_some(())
        },
    );
    assert_eq!(
        get(dir, &["pvc", "too-big"], "{.status.phase}").as_deref(),
        Some("Pending")
    );

    // A StatefulSet's claims are provisioned per pod and its pods run.
    apply(
        dir,
        "sts",
        &format!(
            r#"apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: db
spec:
  replicas: 2
  serviceName: db
  selector:
    matchLabels:
      app: db
  template:
    metadata:
      labels:
        app: db
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: {image}
        command: ["sh", "-c", "hostname > /var/db/name && exec sleep 3600"]
        volumeMounts:
        - name: state
          mountPath: /var/db
  volumeClaimTemplates:
  - metadata:
      name: state
    spec:
      accessModes: ["ReadWriteOnce"]
      resources:
        requests:
          storage: 16Mi
"#
        ),
    );
    let (ok, out, err) = kubectl(
        dir,
        &["rollout", "status", "statefulset/db", "--timeout=180s"],
    );
    assert!(ok, "rollout status: {out}{err}");
    for i in 0..2 {
        let claim = format!("state-db-{i}");
        let got = get(
            dir,
            &["pvc", &claim],
            "{.status.phase} {.spec.storageClassName}",
        );
        assert_eq!(got.as_deref(), Some("Bound local-path"), "{claim}");
        let uid = get(dir, &["pvc", &claim], "{.metadata.uid}").unwrap();
        let file = storage.join(format!("pvc-{uid}_default_{claim}/name"));
        let name = eventually(dir, "the set's file", Duration::from_secs(30), || {
            std::fs::read_to_string(&file).ok()
        });
        assert_eq!(name, format!("db-{i}\n"));
    }

    let status = server.stop(Duration::from_secs(60));
    assert!(status.success(), "exit status {status}");
    drop(reg);
}
