//! User impersonation end to end, with the real kubectl (`/usr/bin/kubectl`, v1.32) against the
//! API over HTTPS on a real SQLite store: `--as`, `--as-group`, `--as-uid`, `auth can-i --as` and
//! `auth whoami --as` run as the impersonated user; a caller without the `impersonate` verb gets
//! kube-apiserver's 403, and one allowed to impersonate only `alice` may do just that; headers
//! kubectl refuses to send (groups or extras without a user) are sent raw over HTTPS.
//!
//! Without kubectl the test prints `skipped:` (or fails when `CI=true`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use r3s_server::api::{ApiOptions, ApiState, serve_listener};
use r3s_server::client;
use r3s_server::store::{SqliteStore, Store, StoreOptions};
use r3s_server::tls::{CertOptions, Certificates, ensure_certificates, server_config};
use serde_json::{Value, json};
use tokio::sync::watch;

const KUBECTL: &str = "/usr/bin/kubectl";

/// The API on a random port; dropping it stops the server and removes its files.
struct Server {
    dir: tempfile::TempDir,
    addr: std::net::SocketAddr,
    certs: Certificates,
    kubeconfig: PathBuf,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.task.abort();
    }
}

fn kubectl_available() -> bool {
    if std::path::Path::new(KUBECTL).exists() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("missing prerequisite: {KUBECTL} (kubectl 1.32)");
    }
    eprintln!("skipped: {KUBECTL} not found");
    false
}

async fn start() -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = ensure_certificates(
        dir.path(),
        &CertOptions {
            extra_sans: vec![],
            cluster_domain: "cluster.local".into(),
            service_ip: "10.43.0.1".parse().expect("literal"),
        },
    )
    .expect("certificates");
    let tls = server_config(&certs).expect("tls config");
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(
            dir.path().join("server/db/state.db"),
            StoreOptions::default(),
        )
        .expect("store"),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let kubeconfig = dir.path().join("kubeconfig.yaml");
    r3s_server::kubeconfig::write(&kubeconfig, 0o600, &format!("https://{addr}"), &certs)
        .expect("kubeconfig");
    let state = ApiState::new(store.clone(), addr.to_string());
    let opts = ApiOptions {
        listen: addr,
        tls,
        advertise_address: addr.to_string(),
        services: state.services.clone(),
        tokens: None,
    };
    let (stop, mut rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        serve_listener(listener, store, opts, shutdown)
            .await
            .expect("serve");
    });
    let admin = client::in_process(state, client::identity("r3s-test-admin"));
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(admin);
    let mut ready = false;
    for _ in 0..200 {
        if namespaces.get_opt("default").await.ok().flatten().is_some() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "the server never served the default namespace");
    Server {
        dir,
        addr,
        certs,
        kubeconfig,
        stop,
        task,
    }
}

impl Server {
    /// Runs kubectl with its own HOME; returns (success, stdout, stderr).
    async fn kubectl(&self, args: &[&str]) -> (bool, String, String) {
        let home = self.dir.path().join("home");
        std::fs::create_dir_all(&home).expect("home");
        let out = tokio::process::Command::new(KUBECTL)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", &home)
            .output()
            .await
            .expect("run kubectl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    async fn ok(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.kubectl(args).await;
        assert!(ok, "kubectl {args:?} failed:\n{stdout}\n{stderr}");
        stdout
    }

    async fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args).await).expect("kubectl printed JSON")
    }

    /// kubectl that must fail; returns stderr.
    async fn fails(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.kubectl(args).await;
        assert!(!ok, "kubectl {args:?} succeeded:\n{stdout}");
        stderr
    }

    fn write(&self, name: &str, body: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, body).expect("write file");
        path.display().to_string()
    }

    /// A kubeconfig for a client certificate of `user` in `groups`.
    fn user_kubeconfig(&self, user: &str, groups: &[&str]) -> String {
        let (cert, key) = r3s_server::tls::issue_client_certificate(self.dir.path(), user, groups)
            .expect("client certificate");
        let config = r3s_server::kubeconfig::render_with(
            &format!("https://{}", self.addr),
            &self.certs.server_ca_pem,
            &cert,
            &key,
        );
        self.write(&format!("{user}.yaml"), &config)
    }

    /// `auth can-i` answer (stdout, trimmed); "no" exits non-zero, so both are accepted.
    async fn can_i(&self, args: &[&str]) -> String {
        let (_, stdout, _) = self.kubectl(args).await;
        stdout.trim().to_string()
    }

    /// One raw admin request over HTTPS with extra headers: (status code, body as JSON).
    async fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> (u16, Value) {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("read kubeconfig");
        let config =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .expect("kube config");
        let client = kube::Client::try_from(config).expect("client");
        let mut request = http::Request::builder()
            .method(method)
            .uri(path)
            .header("Content-Type", "application/json");
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let request = request.body(body.into()).expect("request");
        let response = client.send(request).await.expect("send");
        let code = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect_bytes()
            .await
            .expect("response body");
        (
            code,
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                panic!("not JSON: {}", String::from_utf8_lossy(&bytes));
            }),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_as_impersonates_only_when_allowed() {
    if !kubectl_available() {
        return;
    }
    let s = start().await;

    // The admin may impersonate anyone; alice has no rights at all.
    s.ok(&["get", "pods", "-n", "default"]).await;
    let stderr = s
        .fails(&["--as=alice", "get", "pods", "-n", "default"])
        .await;
    assert!(
        stderr.contains("Error from server (Forbidden): pods is forbidden: User \"alice\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""),
        "{stderr}"
    );
    let me = s
        .json(&["auth", "whoami", "--as=alice", "-o", "json"])
        .await;
    assert_eq!(
        me["status"]["userInfo"],
        json!({"username": "alice", "groups": ["system:authenticated"]}),
        "{me}"
    );
    let me = s
        .json(&[
            "auth",
            "whoami",
            "--as=alice",
            "--as-group=dev",
            "--as-uid=u-1",
            "-o",
            "json",
        ])
        .await;
    assert_eq!(
        me["status"]["userInfo"],
        json!({"username": "alice", "uid": "u-1", "groups": ["dev", "system:authenticated"]}),
        "{me}"
    );

    // A Role in `default` lets alice read pods there, and nowhere else.
    s.ok(&[
        "create",
        "role",
        "pod-reader",
        "-n",
        "default",
        "--verb=get,list",
        "--resource=pods",
    ])
    .await;
    s.ok(&[
        "create",
        "rolebinding",
        "alice-reads",
        "-n",
        "default",
        "--role=pod-reader",
        "--user=alice",
    ])
    .await;
    s.ok(&["--as=alice", "get", "pods", "-n", "default"]).await;
    let stderr = s
        .fails(&["--as=alice", "get", "pods", "-n", "kube-system"])
        .await;
    assert!(
        stderr.contains("User \"alice\" cannot list resource \"pods\" in API group \"\" in the namespace \"kube-system\""),
        "{stderr}"
    );
    assert_eq!(
        s.can_i(&[
            "auth",
            "can-i",
            "list",
            "pods",
            "--as=alice",
            "-n",
            "default"
        ])
        .await,
        "yes"
    );
    assert_eq!(
        s.can_i(&[
            "auth",
            "can-i",
            "list",
            "pods",
            "--as=alice",
            "-n",
            "kube-system"
        ])
        .await,
        "no"
    );
    assert_eq!(
        s.can_i(&["auth", "can-i", "list", "pods", "-n", "kube-system"])
            .await,
        "yes",
        "the admin itself"
    );

    // bob (a client certificate, no rights) may not impersonate...
    let bob = s.user_kubeconfig("bob", &["dev"]);
    let stderr = s
        .fails(&[
            "--kubeconfig",
            &bob,
            "--as=alice",
            "get",
            "pods",
            "-n",
            "default",
        ])
        .await;
    assert!(
        stderr.contains("Error from server (Forbidden): users \"alice\" is forbidden: User \"bob\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"),
        "{stderr}"
    );
    // ...until allowed to impersonate exactly the user alice.
    let role = s.write(
        "impersonate-alice.json",
        &json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "impersonate-alice"},
            "rules": [{"apiGroups": [""], "resources": ["users"], "verbs": ["impersonate"],
                       "resourceNames": ["alice"]}]
        })
        .to_string(),
    );
    s.ok(&["create", "-f", &role]).await;
    s.ok(&[
        "create",
        "clusterrolebinding",
        "bob-impersonates-alice",
        "--clusterrole=impersonate-alice",
        "--user=bob",
    ])
    .await;
    s.ok(&[
        "--kubeconfig",
        &bob,
        "--as=alice",
        "get",
        "pods",
        "-n",
        "default",
    ])
    .await;
    let stderr = s
        .fails(&["--kubeconfig", &bob, "--as=carol", "get", "pods"])
        .await;
    assert!(
        stderr.contains("users \"carol\" is forbidden: User \"bob\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"),
        "{stderr}"
    );
    let stderr = s
        .fails(&[
            "--kubeconfig",
            &bob,
            "--as=alice",
            "--as-group=system:masters",
            "get",
            "pods",
        ])
        .await;
    assert!(
        stderr.contains("groups \"system:masters\" is forbidden: User \"bob\" cannot impersonate resource \"groups\" in API group \"\" at the cluster scope"),
        "{stderr}"
    );
    let stderr = s
        .fails(&[
            "--kubeconfig",
            &bob,
            "--as=alice",
            "--as-uid=u-1",
            "get",
            "pods",
        ])
        .await;
    assert!(
        stderr.contains("uids.authentication.k8s.io \"u-1\" is forbidden: User \"bob\" cannot impersonate resource \"uids\" in API group \"authentication.k8s.io\" at the cluster scope"),
        "{stderr}"
    );

    // A ServiceAccount user gets the ServiceAccount groups (the account need not exist).
    s.ok(&[
        "create",
        "rolebinding",
        "sas-view",
        "-n",
        "default",
        "--clusterrole=view",
        "--group=system:serviceaccounts",
    ])
    .await;
    let sa1 = "--as=system:serviceaccount:default:sa1";
    s.ok(&[sa1, "get", "configmaps", "-n", "default"]).await;
    s.fails(&["--as=alice", "get", "configmaps", "-n", "default"])
        .await;
    let me = s.json(&["auth", "whoami", sa1, "-o", "json"]).await;
    assert_eq!(
        me["status"]["userInfo"],
        json!({"username": "system:serviceaccount:default:sa1",
               "groups": ["system:serviceaccounts", "system:serviceaccounts:default",
                          "system:authenticated"]}),
        "{me}"
    );
    let stderr = s
        .fails(&["--kubeconfig", &bob, sa1, "get", "pods", "-n", "default"])
        .await;
    assert!(
        stderr.contains("serviceaccounts \"sa1\" is forbidden: User \"bob\" cannot impersonate resource \"serviceaccounts\" in API group \"\" in the namespace \"default\""),
        "{stderr}"
    );

    // kubectl itself refuses groups without a user, so send that raw: upstream answers 500.
    let stderr = s.fails(&["--as-group=dev", "get", "pods"]).await;
    assert!(stderr.contains("without impersonating a user"), "{stderr}");
    let (code, status) = s
        .raw(
            "GET",
            "/api/v1/namespaces/default/pods",
            &[("Impersonate-Group", "dev")],
            None,
        )
        .await;
    assert_eq!(code, 500, "{status}");
    assert_eq!(status["reason"], "InternalError", "{status}");
    assert_eq!(
        status["message"],
        "Internal Server Error: \"/api/v1/namespaces/default/pods\": requested [{Group  dev    }] without impersonating a user"
    );
    // Extras: percent-decoded, lower-cased keys, every value checked and kept.
    let (code, review) = s
        .raw(
            "POST",
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            &[
                ("Impersonate-User", "alice"),
                ("Impersonate-Extra-Acme.com%2FProject", "p1"),
                ("Impersonate-Extra-Acme.com%2FProject", "p2"),
            ],
            Some(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})),
        )
        .await;
    assert_eq!(code, 201, "{review}");
    assert_eq!(
        review["status"]["userInfo"]["extra"],
        json!({"acme.com/project": ["p1", "p2"]}),
        "{review}"
    );
}
