//! The in-cluster client path from inside a real pod, with the real binaries: `r3s-server` (API,
//! controllers, scheduler, in-process agent with pod network, service proxy and cluster DNS) on a
//! host that is a network namespace on the underlay 198.51.100.0/24 (the [`cluster`] harness).
//!
//! A pod created the ordinary way gets `KUBERNETES_SERVICE_HOST`/`_PORT` (the `kubernetes`
//! Service, 10.43.0.1:443) and its ServiceAccount credentials under
//! `/var/run/secrets/kubernetes.io/serviceaccount`; the machine's kubectl, run in the pod's network
//! namespace with exactly what an in-cluster client reads (that address, the pod's `ca.crt` and
//! token, no kubeconfig), reaches the API server through the service proxy, verifies its
//! certificate for the Service IP and for `kubernetes.default.svc`, and is the pod's
//! ServiceAccount; so are the Python client's in-cluster loader and kube-rs on the same files. With
//! `automountServiceAccountToken: false` the pod has no credentials directory.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)]

#[path = "../../images/tests/support/mod.rs"]
mod support;

mod cluster;

use std::process::{Command, Stdio};
use std::time::Duration;

use cluster::{Cluster, eventually};

const MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

fn pods(image: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: incluster
  labels: {{app: incluster}}
spec:
  containers:
  - name: c
    image: {image}
    command: ["sleep", "3600"]
---
apiVersion: v1
kind: Pod
metadata:
  name: nocreds
  labels: {{app: nocreds}}
spec:
  automountServiceAccountToken: false
  containers:
  - name: c
    image: {image}
    command: ["sleep", "3600"]
"#
    )
}

/// One `NAME=value` from a process's environment.
fn environ(pid: i32, name: &str) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    raw.split(|b| *b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok())
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")).map(str::to_string))
}

/// The username a SelfSubjectReview through kube-rs reports, the client made as its in-cluster
/// config makes it (server URL, CA, bearer token) on a thread that joined `pid`'s network
/// namespace.
fn kube_rs_whoami(pid: i32, url: &str, ca_pem: &str, token: &str) -> String {
    use base64::Engine;
    let der: Vec<u8> = base64::engine::general_purpose::STANDARD
        .decode(
            ca_pem
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<String>(),
        )
        .unwrap();
    let (url, token) = (url.to_string(), token.to_string());
    std::thread::spawn(move || {
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut config = kube::Config::new(url.parse().unwrap());
            config.root_cert = Some(vec![der]);
            config.headers.push((
                http::header::AUTHORIZATION,
                format!("Bearer {token}").parse().unwrap(),
            ));
            let client = kube::Client::try_from(config).unwrap();
            let body = serde_json::json!({"apiVersion": "authentication.k8s.io/v1",
                                          "kind": "SelfSubjectReview"});
            let request = http::Request::post("/apis/authentication.k8s.io/v1/selfsubjectreviews")
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(serde_json::to_vec(&body).unwrap())
                .unwrap();
            let review: serde_json::Value = client.request(request).await.unwrap();
            review["status"]["userInfo"]["username"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
    })
    .join()
    .unwrap()
}

#[test]
fn an_in_cluster_client_in_a_pod_reaches_the_api_as_its_service_account() {
    if !cluster::prerequisites() {
        return;
    }
    let c = Cluster::start(1, "pa");
    c.apply(&pods(&c.image));
    for app in ["incluster", "nocreds"] {
        eventually(
            &format!("pod {app} Running"),
            Duration::from_secs(180),
            || c.logs(),
            || (!c.pods(&format!("app={app}")).is_empty()).then_some(()),
        );
    }

    // What an in-cluster client reads.
    let pid = c.pod_pid("incluster");
    let host = environ(pid, "KUBERNETES_SERVICE_HOST").expect("KUBERNETES_SERVICE_HOST");
    let port = environ(pid, "KUBERNETES_SERVICE_PORT").expect("KUBERNETES_SERVICE_PORT");
    assert_eq!((host.as_str(), port.as_str()), ("10.43.0.1", "443"));
    let token = c.exec_in_pod_must("incluster", &format!("cat {MOUNT}/token"));
    let ca = c.exec_in_pod_must("incluster", &format!("cat {MOUNT}/ca.crt"));
    let ns = c.exec_in_pod_must("incluster", &format!("cat {MOUNT}/namespace"));
    assert_eq!(ns, "default");
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
    let ca_file = c.dir.path().join("pod-ca.crt");
    std::fs::write(&ca_file, &ca).unwrap();
    let empty = c.dir.path().join("no-kubeconfig.yaml");
    std::fs::write(&empty, "apiVersion: v1\nkind: Config\n").unwrap();

    // The machine's kubectl in the pod's network namespace, as client-go's in-cluster config.
    let whoami = |tls_name: Option<&str>| {
        let server = format!("https://{host}:{port}");
        let mut args = vec![
            "-t".to_string(),
            pid.to_string(),
            "-n".to_string(),
            "--".to_string(),
            "/usr/bin/kubectl".to_string(),
            "--server".to_string(),
            server,
            "--certificate-authority".to_string(),
            ca_file.to_string_lossy().into_owned(),
            "--token".to_string(),
            token.trim().to_string(),
        ];
        if let Some(name) = tls_name {
            args.push("--tls-server-name".into());
            args.push(name.into());
        }
        args.extend(["auth", "whoami", "-o", "json"].map(String::from));
        Command::new("nsenter")
            .args(&args)
            .env("KUBECONFIG", &empty)
            .env("HOME", c.dir.path().join("home"))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    for tls_name in [None, Some("kubernetes.default.svc")] {
        let out = eventually(
            "the API through the kubernetes Service from the pod",
            Duration::from_secs(60),
            || format!("{}\n{}", cluster::text(&whoami(tls_name)), c.logs()),
            || {
                let out = whoami(tls_name);
                out.status.success().then_some(out)
            },
        );
        let review: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let info = &review["status"]["userInfo"];
        assert_eq!(info["username"], "system:serviceaccount:default:default");
        assert_eq!(
            info["extra"]["authentication.kubernetes.io/pod-name"],
            serde_json::json!(["incluster"])
        );
    }

    // The Python client's in-cluster loader, in the pod's network namespace, on the same files.
    let python_ok = Command::new("python3")
        .args(["-c", "import kubernetes"])
        .output()
        .is_ok_and(|o| o.status.success());
    if support::require("the Python `kubernetes` package", python_ok) {
        let token_file = c.dir.path().join("pod-token");
        std::fs::write(&token_file, token.trim()).unwrap();
        let script = format!(
            "from kubernetes import client, config\n\
             from kubernetes.config.incluster_config import InClusterConfigLoader\n\
             InClusterConfigLoader(token_filename={token:?}, cert_filename={ca:?}, \
             environ={{'KUBERNETES_SERVICE_HOST': {host:?}, 'KUBERNETES_SERVICE_PORT': {port:?}}}).load_and_set()\n\
             r = client.AuthenticationV1Api().create_self_subject_review(client.V1SelfSubjectReview())\n\
             print(r.status.user_info.username)\n",
            token = token_file.to_string_lossy(),
            ca = ca_file.to_string_lossy(),
        );
        let out = Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-n", "--", "python3", "-c", &script])
            .env("HOME", c.dir.path().join("home"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "python: {}", cluster::text(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "system:serviceaccount:default:default"
        );
    }

    // kube-rs (rustls), from a thread in the pod's network namespace, on the same address and files.
    let username = kube_rs_whoami(pid, &format!("https://{host}:{port}"), &ca, token.trim());
    assert_eq!(username, "system:serviceaccount:default:default");

    // No credentials where automount is off.
    let out = c.exec_in_pod("nocreds", &format!("ls {MOUNT}"));
    assert!(!out.status.success(), "{}", cluster::text(&out));
}
