//! End to end, as root: in-cluster API credentials for pods. The real API server in-process (HTTPS,
//! SQLite store, ServiceAccount token issuer, the ServiceAccount controller publishing
//! `kube-root-ca.crt`), a real `docker-registry` serving a busybox-static image, and
//! [`r3s_agent::run_node`] running pods through libcontainer as a node identity
//! (`system:node:<name>`, so the node authorizer and the token binding checks apply as in
//! production).
//!
//! Checks: a pod gets upstream's `kube-api-access-*` projected volume (as `kubectl get -o yaml`
//! shows it) and its container reads the token, `ca.crt` and namespace at
//! `/var/run/secrets/kubernetes.io/serviceaccount`; kubectl with exactly those (CA, token, TLS name
//! `kubernetes.default.svc` or the `kubernetes` Service IP) is the pod's ServiceAccount, bound to the
//! pod; `automountServiceAccountToken: false` gives no credentials; a downwardAPI volume shows the
//! pod's labels and follows a label change; configMap and secret volumes follow changes of their
//! objects in the running container (keeping the last contents when the object is deleted); a missing ServiceAccount is refused with upstream's
//! Forbidden; a node cannot get an unbound token; the token stops working once the pod is deleted.
//!
//! Everything the test creates (containers, mounts, cgroups, the registry, temp dirs) is removed by
//! guards, on failure too. No pod network, cluster DNS or service proxy: pods get a loopback-only
//! namespace, so nothing here touches host-wide links, addresses or rules.
#![allow(clippy::unwrap_used)]

#[path = "../../images/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Endpoints, Pod, ServiceAccount};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use oci_client::secrets::RegistryAuth;
use r3s_agent::NodeOptions;
use r3s_server::api::{ApiState, TokenIssuer};
use r3s_server::client;
use r3s_server::controllers::ControllerOptions;
use r3s_server::store::{SqliteStore, Store, StoreOptions};
use r3s_server::tls::{CertOptions, ensure_certificates, server_config};
use serde_json::{Value, json};
use support::{Compression, Entry, Registry, require};
use tokio::sync::{oneshot, watch};

const KUBECTL: &str = "/usr/bin/kubectl";
const MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Removes whatever the agent left if the test fails half-way (containers, mounts, cgroups).
struct AgentGuard {
    run_dir: PathBuf,
    data_dir: PathBuf,
    cgroup_root: PathBuf,
}

impl Drop for AgentGuard {
    fn drop(&mut self) {
        let run_dir = self.run_dir.clone();
        // A fresh runtime on its own thread: Drop may run inside the test's runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let runtime = r3s_agent::runtime::Runtime::new(run_dir.join("containers"));
            rt.block_on(r3s_agent::runtime::cleanup::delete_all(&runtime));
        })
        .join();
        r3s_agent::runtime::cleanup::unmount_below(&self.data_dir);
        r3s_agent::runtime::cleanup::unmount_below(&self.run_dir);
        r3s_agent::runtime::cleanup::remove_cgroup(&self.cgroup_root);
    }
}

/// Polls `f` until it returns `Some`, up to five minutes (a bound on a hang, not a timing check).
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..1500 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The container's output so far (CRI log lines, content only).
fn output(data_dir: &Path, pod: &Pod, container: &str) -> String {
    let dir = data_dir.join("agent/pods").join(format!(
        "default_{}_{}",
        pod.metadata.name.as_deref().unwrap(),
        pod.metadata.uid.as_deref().unwrap()
    ));
    let text = std::fs::read_to_string(dir.join(container).join("0.log")).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.splitn(4, ' ').nth(3))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The lines of `text` strictly between the lines `start` and `end`.
fn between(text: &str, start: &str, end: &str) -> Option<String> {
    let from = text.find(&format!("{start}\n"))? + start.len() + 1;
    let to = from + text[from..].find(&format!("\n{end}"))?;
    Some(text[from..to].to_string())
}

/// Runs kubectl with no kubeconfig of its own plus `args`.
fn kubectl(home: &Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(KUBECTL)
        .args(args)
        .env("KUBECONFIG", home.join("none.yaml"))
        .env("HOME", home)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_get_working_in_cluster_credentials() {
    if !require("root", support::is_root())
        || !support::have_registry()
        || !support::have_busybox()
        || !require("kubectl (/usr/bin/kubectl)", Path::new(KUBECTL).exists())
    {
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "r3s_agent=info".into()),
        )
        .with_test_writer()
        .try_init();
    let tmp = tempfile::tempdir().unwrap();
    let uniq = format!("r3st{}pa", std::process::id());

    // A busybox-static image in a real registry.
    let reg = Registry::start();
    let bb = std::fs::read("/bin/busybox").unwrap();
    let mut entries = vec![
        Entry::Dir("bin", 0o755),
        Entry::File("bin/busybox", bb, 0o755),
        Entry::Dir("tmp", 0o1777),
    ];
    for applet in ["sh", "echo", "sleep", "cat", "ls"] {
        entries.push(Entry::Symlink(
            Box::leak(format!("bin/{applet}").into_boxed_str()),
            "busybox",
        ));
    }
    let layer = support::layer(&entries, Compression::Gzip);
    let img = support::image(
        vec![layer],
        r3s_agent::node::info::architecture(),
        None,
        false,
    );
    reg.push("busybox", "1", &img, &RegistryAuth::Anonymous)
        .await;
    let image = format!("{}/busybox:1", reg.addr);

    // The API server with a token issuer, and the ServiceAccount controller.
    let server_dir = tmp.path().join("server");
    let certs = ensure_certificates(
        &server_dir,
        &CertOptions {
            extra_sans: vec![],
            cluster_domain: "cluster.local".into(),
            service_ip: "10.43.0.1".parse().unwrap(),
        },
    )
    .unwrap();
    let tls = server_config(&certs).unwrap();
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(
            server_dir.join("server/db/state.db"),
            StoreOptions::default(),
        )
        .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut state = ApiState::new(store, addr.to_string());
    state.tokens = Some(Arc::new(
        TokenIssuer::from_pem(&certs.service_account_key_pem).unwrap(),
    ));
    r3s_server::api::prepare(&state).await.unwrap();
    let (stop_server, stopped) = watch::channel(false);
    let shutdown = move || {
        let mut rx = stopped.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let serving = tokio::spawn(r3s_server::api::serve_state(
        listener,
        state.clone(),
        tls,
        shutdown(),
    ));
    let controller = tokio::spawn(r3s_server::controllers::serviceaccount::run(
        client::in_process(
            state.clone(),
            client::identity(client::CONTROLLER_MANAGER_USER),
        ),
        ControllerOptions {
            root_ca_pem: Some(certs.server_ca_pem.clone()),
            ..ControllerOptions::default()
        },
        shutdown(),
    ));
    let admin = client::in_process(state.clone(), client::identity("system:admin"));
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("none.yaml"), "apiVersion: v1\nkind: Config\n").unwrap();
    let server_url = format!("https://{addr}");

    // The agent, as a node.
    let data_dir = tmp.path().join("data");
    let run_dir = tmp.path().join("run");
    let cgroup_root = PathBuf::from(format!("/{uniq}"));
    let _guard = AgentGuard {
        run_dir: run_dir.clone(),
        data_dir: data_dir.clone(),
        cgroup_root: cgroup_root.clone(),
    };
    let node_name = format!("{uniq}-node");
    let node_client = client::in_process(state.clone(), client::node_identity(&node_name));
    let mut opts = NodeOptions::new(&node_name, &data_dir);
    opts.run_dir = run_dir.clone();
    opts.node_ip = Some("127.0.0.1".parse().unwrap());
    opts.cgroup_root = cgroup_root.clone();
    opts.shim = Some(PathBuf::from(env!("CARGO_BIN_EXE_r3s-agent")));
    let mut registries = r3s_images::RegistriesConfig::from_yaml(&format!(
        "mirrors:\n  \"{0}\":\n    endpoint:\n      - \"http://{0}\"\n",
        reg.addr
    ))
    .unwrap();
    registries.disable_default_endpoint = true;
    opts.registries = registries;
    opts.cluster_cidr = None;
    // Nothing host-wide: no cluster DNS address on lo, no service proxy rules.
    opts.cluster_dns = None;
    opts.service_proxy = false;
    // configMap and secret volumes are compared with the API every second here (kubelet's
    // --sync-frequency; one minute by default).
    opts.sync_frequency = Duration::from_secs(1);
    let (stop_agent, agent_stopped) = oneshot::channel::<()>();
    let agent = tokio::spawn(r3s_agent::run_node(node_client.clone(), opts, async {
        let _ = agent_stopped.await;
    }));

    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let create = |name: &str, extra: Value, command: &str| {
        let mut spec = json!({
            "nodeName": node_name,
            "terminationGracePeriodSeconds": 2,
            "containers": [{"name": "c", "image": image, "command": ["sh", "-c", command]}],
        });
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                spec.insert(k.clone(), v.clone());
            }
        }
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
            "spec": spec,
        }))
        .unwrap();
        let pods = pods.clone();
        async move { pods.create(&PostParams::default(), &pod).await }
    };
    let running = |name: &'static str| {
        let pods = pods.clone();
        async move {
            eventually(&format!("pod {name} Running"), || async {
                let p = pods.get_opt(name).await.ok().flatten()?;
                let phase = p.status.as_ref()?.phase.clone()?;
                assert_ne!(phase, "Failed", "{name}: {:?}", p.status);
                (phase == "Running").then_some(p)
            })
            .await
        }
    };

    // 1. A pod with the default ServiceAccount: the injected volume, and the files inside.
    let script = format!(
        "echo NS-START; cat {MOUNT}/namespace; echo; echo NS-END; \
         echo CA-START; cat {MOUNT}/ca.crt; echo CA-END; \
         echo TOKEN-START; cat {MOUNT}/token; echo; echo TOKEN-END; sleep 3600"
    );
    create("api", json!({}), &script).await.unwrap();
    let pod = running("api").await;
    let spec = serde_json::to_value(pod.spec.as_ref().unwrap()).unwrap();
    assert_eq!(spec["serviceAccountName"], "default");
    assert_eq!(spec["serviceAccount"], "default");
    let volume = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"].as_str().unwrap().starts_with("kube-api-access-"))
        .cloned()
        .expect("the kube-api-access volume");
    let volume_name = volume["name"].as_str().unwrap().to_string();
    assert_eq!(volume_name.len(), "kube-api-access-".len() + 5);
    assert_eq!(volume["projected"]["defaultMode"], 420);
    assert_eq!(
        volume["projected"]["sources"][0]["serviceAccountToken"],
        json!({"expirationSeconds": 3607, "path": "token"})
    );
    assert_eq!(
        spec["containers"][0]["volumeMounts"],
        json!([{"name": volume_name, "mountPath": MOUNT, "readOnly": true}])
    );
    let admin_kubeconfig = tmp.path().join("admin.yaml");
    r3s_server::kubeconfig::write(&admin_kubeconfig, 0o600, &server_url, &certs).unwrap();
    let (ok, yaml, err) = kubectl(
        &home,
        &[
            "--kubeconfig",
            &admin_kubeconfig.to_string_lossy(),
            "get",
            "pod",
            "api",
            "-o",
            "yaml",
        ],
    );
    assert!(ok, "kubectl get pod -o yaml: {err}");
    for want in [
        format!("name: {volume_name}"),
        format!("mountPath: {MOUNT}"),
        "expirationSeconds: 3607".to_string(),
        "name: kube-root-ca.crt".to_string(),
        "fieldPath: metadata.namespace".to_string(),
        "serviceAccountName: default".to_string(),
    ] {
        assert!(yaml.contains(&want), "{want:?} in\n{yaml}");
    }

    let seen = eventually("the container's credentials output", || async {
        let text = output(&data_dir, &pod, "c");
        text.contains("TOKEN-END").then_some(text)
    })
    .await;
    assert_eq!(between(&seen, "NS-START", "NS-END").unwrap(), "default");
    let ca = between(&seen, "CA-START", "CA-END").unwrap();
    assert_eq!(
        ca.trim(),
        certs.server_ca_pem.trim(),
        "ca.crt is the cluster CA"
    );
    let token = between(&seen, "TOKEN-START", "TOKEN-END")
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");

    // kubectl as an in-cluster client would be: the pod's CA and token, and the name or the
    // Service IP the `kubernetes` Service is reached by.
    let ca_file = tmp.path().join("pod-ca.crt");
    std::fs::write(&ca_file, &ca).unwrap();
    let as_pod = |tls_name: &str| {
        let (ca_file, home, url, token) = (
            ca_file.clone(),
            home.clone(),
            server_url.clone(),
            token.clone(),
        );
        let tls_name = tls_name.to_string();
        move || {
            kubectl(
                &home,
                &[
                    "--server",
                    &url,
                    "--certificate-authority",
                    &ca_file.to_string_lossy(),
                    "--tls-server-name",
                    &tls_name,
                    "--token",
                    &token,
                    "auth",
                    "whoami",
                    "-o",
                    "json",
                ],
            )
        }
    };
    for name in ["kubernetes.default.svc", "10.43.0.1"] {
        let (ok, out, err) = as_pod(name)();
        assert!(ok, "kubectl auth whoami as the pod via {name}: {err}");
        let review: Value = serde_json::from_str(&out).unwrap();
        let info = &review["status"]["userInfo"];
        assert_eq!(info["username"], "system:serviceaccount:default:default");
        assert_eq!(
            info["extra"]["authentication.kubernetes.io/pod-name"],
            json!(["api"])
        );
        assert_eq!(
            info["extra"]["authentication.kubernetes.io/pod-uid"],
            json!([pod.metadata.uid.as_deref().unwrap()])
        );
        assert_eq!(
            info["extra"]["authentication.kubernetes.io/node-name"],
            json!([node_name])
        );
        let sa: Api<ServiceAccount> = Api::namespaced(admin.clone(), "default");
        let sa_uid = sa.get("default").await.unwrap().metadata.uid.unwrap();
        assert_eq!(info["uid"], sa_uid.as_str());
    }
    // The `kubernetes` Service's Endpoints point at this server, where the Service proxy sends
    // in-cluster clients.
    let eps: Api<Endpoints> = Api::namespaced(admin.clone(), "default");
    let ep = serde_json::to_value(eps.get("kubernetes").await.unwrap()).unwrap();
    assert_eq!(ep["subsets"][0]["addresses"][0]["ip"], "127.0.0.1");
    assert_eq!(ep["subsets"][0]["ports"][0]["port"], addr.port());

    // The token on the node is the one the container read, in the atomic-writer layout.
    let uid = pod.metadata.uid.clone().unwrap();
    let vol_dir = data_dir.join("agent/volumes").join(&uid).join(&volume_name);
    assert_eq!(
        std::fs::read_to_string(vol_dir.join("token")).unwrap(),
        token
    );
    assert_eq!(
        std::fs::read_link(vol_dir.join("token")).unwrap(),
        PathBuf::from("..data/token")
    );

    // 2. automountServiceAccountToken: false gives no credentials.
    create(
        "noauto",
        json!({"automountServiceAccountToken": false}),
        &format!("ls {MOUNT} || echo NO-CREDENTIALS; sleep 3600"),
    )
    .await
    .unwrap();
    let noauto = running("noauto").await;
    let spec = serde_json::to_value(noauto.spec.as_ref().unwrap()).unwrap();
    assert!(spec["volumes"].is_null(), "{spec}");
    assert!(spec["containers"][0]["volumeMounts"].is_null(), "{spec}");
    eventually("noauto's output", || async {
        output(&data_dir, &noauto, "c")
            .contains("NO-CREDENTIALS")
            .then_some(())
    })
    .await;

    // 3. A downwardAPI volume shows the pod's labels and follows a change.
    create(
        "labels",
        json!({"automountServiceAccountToken": false,
               "volumes": [{"name": "podinfo", "downwardAPI": {"items": [
                   {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                   {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}}],
               "containers": [{"name": "c", "image": image,
                   "command": ["sh", "-c", "echo L-START; cat /etc/podinfo/labels; echo; echo L-END; cat /etc/podinfo/name; echo; sleep 3600"],
                   "volumeMounts": [{"name": "podinfo", "mountPath": "/etc/podinfo"}]}]}),
        "",
    )
    .await
    .unwrap();
    let labelled = running("labels").await;
    let seen = eventually("the labels pod's output", || async {
        let text = output(&data_dir, &labelled, "c");
        text.contains("L-END").then_some(text)
    })
    .await;
    assert_eq!(
        between(&seen, "L-START", "L-END").unwrap(),
        "app=\"labels\""
    );
    assert!(seen.contains("\nlabels"), "{seen}");
    pods.patch(
        "labels",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"tier": "front"}}})),
    )
    .await
    .unwrap();
    let file = data_dir
        .join("agent/volumes")
        .join(labelled.metadata.uid.as_deref().unwrap())
        .join("podinfo/labels");
    eventually("the labels file updated", || async {
        (std::fs::read_to_string(&file).ok()? == "app=\"labels\"\ntier=\"front\"").then_some(())
    })
    .await;

    // 3b. configMap and secret volumes follow their objects, atomically, in the running
    // container; the projected token is kept between its renewals.
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(admin.clone(), "default");
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(admin.clone(), "default");
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(
            json!({"metadata": {"name": "cfg"}, "data": {"greeting": "hello"}}),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "creds"}, "stringData": {"password": "one"}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let watch_files = "last=; while :; do v=\"$(cat /etc/cfg/greeting) $(cat /etc/creds/password)\"; \
                       [ \"$v\" != \"$last\" ] && echo \"SEEN $v\"; last=$v; sleep 1; done";
    create(
        "objects",
        json!({"automountServiceAccountToken": false,
               "volumes": [{"name": "cfg", "configMap": {"name": "cfg"}},
                           {"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o400}}],
               "containers": [{"name": "c", "image": image, "command": ["sh", "-c", watch_files],
                   "volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg"},
                                    {"name": "creds", "mountPath": "/etc/creds"}]}]}),
        "",
    )
    .await
    .unwrap();
    let objects_pod = running("objects").await;
    eventually("the first contents in the container", || async {
        output(&data_dir, &objects_pod, "c")
            .contains("SEEN hello one")
            .then_some(())
    })
    .await;
    cms.patch(
        "cfg",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"greeting": "bonjour"}})),
    )
    .await
    .unwrap();
    secrets
        .patch(
            "creds",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"password": "two"}})),
        )
        .await
        .unwrap();
    let seen = eventually("the updated contents in the container", || async {
        let text = output(&data_dir, &objects_pod, "c");
        text.contains("SEEN bonjour two").then_some(text)
    })
    .await;
    let lines: Vec<&str> = seen.lines().filter(|l| l.starts_with("SEEN")).collect();
    assert_eq!(lines.first(), Some(&"SEEN hello one"), "{seen}");
    let objects_dir = data_dir
        .join("agent/volumes")
        .join(objects_pod.metadata.uid.as_deref().unwrap());
    let mode = |p: PathBuf| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode(objects_dir.join("creds/password")), 0o400);
    assert_eq!(mode(objects_dir.join("cfg/greeting")), 0o644);
    // One version directory per volume: the old one went with the `..data` swap.
    let versions = std::fs::read_dir(objects_dir.join("cfg"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.starts_with("..") && n != "..data"
        })
        .count();
    assert_eq!(versions, 1);
    // A deleted configMap leaves the last contents in place (kubelet keeps them too).
    cms.delete("cfg", &DeleteParams::default()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        std::fs::read_to_string(objects_dir.join("cfg/greeting")).unwrap(),
        "bonjour"
    );
    // Many sync periods have passed: the api pod's token is still the one it was issued.
    assert_eq!(
        std::fs::read_to_string(vol_dir.join("token")).unwrap(),
        token
    );

    // 4. A missing ServiceAccount is refused as upstream refuses it.
    let refused = create("ghost", json!({"serviceAccountName": "ghost"}), "sleep 1")
        .await
        .unwrap_err();
    match refused {
        kube::Error::Api(e) => {
            assert_eq!(e.code, 403);
            assert_eq!(
                e.message,
                "pods \"ghost\" is forbidden: error looking up service account default/ghost: serviceaccount \"ghost\" not found"
            );
        }
        other => panic!("unexpected {other:?}"),
    }

    // 5. A node gets only tokens bound to its own pods.
    let node_sas: Api<ServiceAccount> = Api::namespaced(node_client.clone(), "default");
    let unbound = node_sas
        .create_subresource::<_, Value>(
            "token",
            "default",
            &PostParams::default(),
            &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}),
        )
        .await
        .unwrap_err();
    match unbound {
        kube::Error::Api(e) => {
            assert_eq!(e.code, 403);
            assert!(
                e.message
                    .contains("node requested token not bound to a pod"),
                "{}",
                e.message
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        node_sas.get("default").await.is_err(),
        "a node does not read ServiceAccounts"
    );

    // 6. The token dies with its pod.
    pods.delete("api", &DeleteParams::default()).await.unwrap();
    eventually("pod api gone", || async {
        pods.get_opt("api").await.unwrap().is_none().then_some(())
    })
    .await;
    let (ok, _, err) = as_pod("kubernetes.default.svc")();
    assert!(!ok, "the deleted pod's token still works");
    assert!(err.contains("Unauthorized"), "{err}");

    for name in ["noauto", "labels", "objects"] {
        pods.delete(name, &DeleteParams::default()).await.unwrap();
    }
    eventually("every pod gone", || async {
        pods.list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
            .then_some(())
    })
    .await;
    let _ = stop_agent.send(());
    agent.await.unwrap().unwrap();
    let _ = stop_server.send(true);
    let _ = serving.await;
    let _ = controller.await;
}
