//! The API server in-process for tests that drive it with the real kubectl (`/usr/bin/kubectl`,
//! v1.32): HTTPS (rustls) on a random 127.0.0.1 port, a real SQLite store, certificates and the
//! admin kubeconfig generated in a temp dir as on a first start; on request ServiceAccount tokens
//! and the control loops. The HTTPS listener and the in-process clients share one [`ApiState`].
//!
//! kubectl runs with its own `HOME` (`<dir>/home`), so its discovery cache starts empty and no
//! host config leaks in. [`start`] returns once the start-up namespaces are served. Dropping an
//! [`ApiServer`] stops every task it started and removes its files.
//!
//! Included by path (`#[path = "support/kubectl_api.rs"] mod kubectl_api;`) by the API tests, so
//! they do not compile the in-process cluster, and as `support::kubectl_api` by that cluster.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use r3s_server::api::{ApiOptions, ApiState, TokenIssuer, serve_listener};
use r3s_server::client::{self, CONTROLLER_MANAGER_USER};
use r3s_server::controllers::informer::Informers;
use r3s_server::controllers::{self, ControllerOptions};
use r3s_server::store::{SqliteStore, Store, StoreOptions};
use r3s_server::tls::{CertOptions, Certificates, ensure_certificates, server_config};
use serde_json::Value;
use tokio::sync::watch;

pub const KUBECTL: &str = "/usr/bin/kubectl";

/// True if kubectl exists; otherwise prints `skipped:` (or panics when `CI=true`).
pub fn have_kubectl() -> bool {
    prerequisite(
        &format!("{KUBECTL} (kubectl 1.32)"),
        Path::new(KUBECTL).exists(),
    )
}

/// True if Python's `kubernetes` client (PyPI) imports; otherwise prints `skipped:` (or panics
/// when `CI=true`).
pub fn have_python_client() -> bool {
    let imports = std::process::Command::new("python3")
        .args(["-c", "import kubernetes"])
        .output()
        .is_ok_and(|o| o.status.success());
    prerequisite(
        "the Python `kubernetes` package (pip install kubernetes)",
        imports,
    )
}

/// `present`, after saying `skipped:` when it is not; a missing prerequisite fails under CI.
fn prerequisite(what: &str, present: bool) -> bool {
    let ci = std::env::var("CI").as_deref() == Ok("true");
    assert!(present || !ci, "missing prerequisite: {what}");
    if !present {
        eprintln!("skipped: {what} is missing");
    }
    present
}

/// What [`start`] sets up besides the API.
#[derive(Default)]
pub struct Options {
    /// Extra names in the serving certificate.
    pub extra_sans: Vec<String>,
    /// Issue and accept ServiceAccount tokens (TokenRequest, TokenReview, bearer tokens).
    pub tokens: bool,
    /// Run the control loops in-process (as the controller manager) with these options.
    pub controllers: Option<ControllerOptions>,
}

/// A running API server; see the module documentation.
pub struct ApiServer {
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub certs: Certificates,
    /// The admin kubeconfig (`system:admin`, `system:masters`).
    pub kubeconfig: PathBuf,
    /// Shared with the HTTPS listener: in-process clients see the same store and allocators.
    pub state: ApiState,
    /// The shared Pod/Node caches of the control loops (when they run), for the scheduler.
    pub informers: Option<Informers>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts the API (and what `opts` asks for) on a fresh temp dir.
pub async fn start(opts: Options) -> ApiServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = ensure_certificates(
        dir.path(),
        &CertOptions {
            extra_sans: opts.extra_sans,
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
    let mut state = ApiState::new(store.clone(), addr.to_string());
    if opts.tokens {
        state.tokens = Some(Arc::new(
            TokenIssuer::from_pem(&certs.service_account_key_pem).expect("token issuer"),
        ));
    }
    let api_opts = ApiOptions {
        listen: addr,
        tls,
        advertise_address: addr.to_string(),
        services: state.services.clone(),
        tokens: state.tokens.clone(),
    };
    let (stop, _) = watch::channel(false);
    let mut server = ApiServer {
        dir,
        addr,
        certs,
        kubeconfig,
        state,
        informers: None,
        stop,
        tasks: Vec::new(),
    };
    let shutdown = server.shutdown_signal();
    server.keep(tokio::spawn(async move {
        serve_listener(listener, store, api_opts, shutdown)
            .await
            .expect("serve");
    }));
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(server.admin());
    let served = |name: &'static str| {
        let namespaces = namespaces.clone();
        async move { namespaces.get_opt(name).await.ok().flatten().is_some() }
    };
    // `kube-node-lease` is the last namespace the server creates at start.
    wait_for(
        "the start-up namespaces",
        Duration::from_secs(10),
        || async { served("default").await && served("kube-node-lease").await },
    )
    .await;
    if let Some(ctrl_opts) = opts.controllers {
        let ctrl = client::in_process(
            server.state.clone(),
            client::identity(CONTROLLER_MANAGER_USER),
        );
        let shutdown = server.shutdown_signal();
        let informers = Informers::start(&ctrl);
        server.informers = Some(informers.clone());
        server.keep(tokio::spawn(controllers::run(
            ctrl, ctrl_opts, informers, shutdown,
        )));
    }
    server
}

/// Polls `check` until it holds, panicking with `what` after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The column names of a table kubectl printed (its first line).
pub fn header(table: &str) -> Vec<&str> {
    table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect()
}

impl ApiServer {
    /// Resolves when the server is dropped; the shutdown parameter of the server's components
    /// (spelled out so the `Sync` bound they need is part of the signature).
    #[allow(clippy::manual_async_fn)]
    pub fn shutdown_signal(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let mut rx = self.stop.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    /// Aborts `task` when the server is dropped.
    pub fn keep(&mut self, task: tokio::task::JoinHandle<()>) {
        self.tasks.push(task);
    }

    /// An administrator's client in-process (`system:masters`), on the shared state.
    pub fn admin(&self) -> kube::Client {
        client::in_process(self.state.clone(), client::identity("r3s-test-admin"))
    }

    /// A client over HTTPS from the admin kubeconfig.
    pub async fn client(&self) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("read kubeconfig");
        let config =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .expect("kube config");
        kube::Client::try_from(config).expect("client")
    }

    /// Runs kubectl with its own HOME and `env` added; returns (exit code, stdout, stderr).
    pub async fn kubectl_env(
        &self,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> (Option<i32>, String, String) {
        let home = self.dir.path().join("home");
        std::fs::create_dir_all(&home).expect("home");
        let out = tokio::process::Command::new(KUBECTL)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", &home)
            .env_remove("KUBECTL_EXTERNAL_DIFF")
            .envs(env.iter().copied())
            .output()
            .await
            .expect("run kubectl");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs kubectl with its own HOME; returns (exit code, stdout, stderr).
    pub async fn kubectl_code(&self, args: &[&str]) -> (Option<i32>, String, String) {
        self.kubectl_env(args, &[]).await
    }

    /// Runs kubectl with its own HOME; returns (success, stdout, stderr).
    pub async fn kubectl(&self, args: &[&str]) -> (bool, String, String) {
        let (code, stdout, stderr) = self.kubectl_env(args, &[]).await;
        (code == Some(0), stdout, stderr)
    }

    /// kubectl that must succeed; returns stdout.
    pub async fn ok(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.kubectl(args).await;
        assert!(ok, "kubectl {args:?} failed:\n{stdout}\n{stderr}");
        stdout
    }

    /// kubectl that must succeed and print JSON.
    pub async fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args).await).expect("kubectl printed JSON")
    }

    /// kubectl that must fail; returns stderr.
    pub async fn fails(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.kubectl(args).await;
        assert!(!ok, "kubectl {args:?} succeeded:\n{stdout}");
        stderr
    }

    /// kubectl that must exit with `code`; returns stderr.
    pub async fn fails_with(&self, code: i32, args: &[&str]) -> String {
        let (got, stdout, stderr) = self.kubectl_code(args).await;
        assert_eq!(got, Some(code), "kubectl {args:?}:\n{stdout}\n{stderr}");
        stderr
    }

    /// `auth can-i` answer (stdout, trimmed); "no" exits non-zero, so both are accepted.
    pub async fn can_i(&self, args: &[&str]) -> String {
        let (_, stdout, _) = self.kubectl(args).await;
        stdout.trim().to_string()
    }

    /// Polls `kubectl args` until its output satisfies `check` (the controllers work
    /// asynchronously), failing with the last output after 30 s.
    pub async fn eventually(&self, args: &[&str], check: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        for _ in 0..300 {
            let (ok, stdout, stderr) = self.kubectl(args).await;
            if ok && check(&stdout) {
                return stdout;
            }
            last = format!("{stdout}{stderr}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("kubectl {args:?} never reached the expected state; last output:\n{last}");
    }

    /// Runs the Python `script` (saved as `name`) with the admin kubeconfig's path as its
    /// argument; it must succeed. Returns its stdout.
    pub async fn python(&self, name: &str, script: &str) -> String {
        let script = self.write(name, script);
        let out = tokio::process::Command::new("python3")
            .arg(&script)
            .arg(&self.kubeconfig)
            .output()
            .await
            .expect("run python");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        stdout
    }

    /// Writes `body` to `name` in the server's dir; returns the path.
    pub fn write(&self, name: &str, body: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, body).expect("write manifest");
        path.display().to_string()
    }

    /// A kubeconfig `<user>.yaml` for a client certificate of `user` in `groups`.
    pub fn user_kubeconfig(&self, user: &str, groups: &[&str]) -> String {
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

    /// A kubeconfig `name` that trusts the server CA and authenticates with `token` only.
    pub fn token_kubeconfig(&self, name: &str, token: &str) -> String {
        let admin = std::fs::read_to_string(&self.kubeconfig).expect("admin kubeconfig");
        let field = |key: &str| {
            admin
                .lines()
                .find_map(|l| l.trim().strip_prefix(key).map(str::to_string))
                .expect("kubeconfig field")
        };
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority-data: {}\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u, namespace: default}}\ncurrent-context: c\n",
            field("server: "),
            field("certificate-authority-data: ")
        );
        self.write(name, &config)
    }

    /// One raw admin request over HTTPS with extra headers: (status code, body as JSON).
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> (u16, Value) {
        let client = self.client().await;
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
