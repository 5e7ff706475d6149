//! The pieces of a real cluster the benchmark starts: its own network namespaces, the release
//! `r3s-server` and `r3s-agent` binaries as child processes, a `docker-registry` holding a
//! busybox-static image, and clients for the API.
//!
//! Isolation (see [`crate::outer`]): this process runs inside a network namespace of its own
//! (`r3sb<pid>`), so the server's bridge, nftables tables, cluster DNS address and ports never touch
//! the host's; the lone agent runs in a second namespace (`r3sba<pid>`) joined by a veth pair on
//! 203.0.113.0/24 (server 203.0.113.1, agent 203.0.113.2). Every child process is stopped by PID
//! (SIGTERM, then SIGKILL) by a drop guard; the outer process sweeps whatever is left.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;

pub const SERVER_IP: &str = "203.0.113.1";
pub const AGENT_IP: &str = "203.0.113.2";
pub const KUBECTL: &str = "/usr/bin/kubectl";

/// A child process stopped by PID on drop: SIGTERM (so an agent stops its pods), SIGKILL after 60 s.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
    pub started: Instant,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> anyhow::Result<Proc> {
        let f = std::fs::File::create(&log).with_context(|| format!("{}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .with_context(|| format!("spawn {name}"))?;
        Ok(Proc {
            name: name.into(),
            child: Some(child),
            log,
            started: Instant::now(),
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where the release binaries are: beside this one (target/release).
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    // R3S_BENCH_BIN_DIR lets a runner built in another profile measure the release binaries.
    let p = match std::env::var_os("R3S_BENCH_BIN_DIR") {
        Some(d) => PathBuf::from(d).join(name),
        None => std::env::current_exe()?.with_file_name(name),
    };
    if !p.exists() {
        bail!(
            "{} is missing: build it with `cargo build --release -p r3s-server -p r3s-agent`",
            p.display()
        );
    }
    Ok(p)
}

/// Options for a server process.
pub struct ServerSpec<'a> {
    pub dir: &'a Path,
    pub logs: &'a Path,
    pub node: &'a str,
    pub disable_agent: bool,
    pub registries: Option<&'a Path>,
}

pub fn spawn_server(s: &ServerSpec<'_>) -> anyhow::Result<Proc> {
    let empty = s.dir.join("empty-config.yaml");
    std::fs::write(&empty, "")?;
    let mut cmd = Command::new(bin("r3s-server")?);
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("R3S_CONFIG_FILE", &empty)
        .env("RUST_LOG", "info")
        .arg("--data-dir")
        .arg(s.dir.join("data"))
        .arg("--write-kubeconfig")
        .arg(s.dir.join("kubeconfig.yaml"))
        .args([
            "--node-name",
            s.node,
            "--node-ip",
            SERVER_IP,
            "--tls-san",
            SERVER_IP,
        ]);
    if s.disable_agent {
        cmd.arg("--disable-agent");
    }
    if let Some(r) = s.registries {
        cmd.arg("--private-registry").arg(r);
    }
    Proc::spawn(
        &format!("r3s-server {}", s.node),
        cmd,
        s.logs.join(format!("server-{}.log", s.node)),
    )
}

pub fn spawn_agent(
    dir: &Path,
    logs: &Path,
    node: &str,
    token: &str,
    registries: &Path,
) -> anyhow::Result<Proc> {
    let ns = crate::outer::agent_netns().context("no agent network namespace (run as root)")?;
    let empty = dir.join("empty-config.yaml");
    std::fs::write(&empty, "")?;
    let mut cmd = Command::new(bin("r3s-agent")?);
    crate::outer::enter(&mut cmd, &ns)?;
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("R3S_CONFIG_FILE", &empty)
        .env("RUST_LOG", "info")
        .args([
            "--server",
            &format!("https://{SERVER_IP}:6443"),
            "--token",
            token,
        ])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--node-name", node, "--node-ip", AGENT_IP])
        .arg("--private-registry")
        .arg(registries);
    Proc::spawn(
        &format!("r3s-agent {node}"),
        cmd,
        logs.join(format!("agent-{node}.log")),
    )
}

/// An admin client from a kubeconfig the server wrote.
pub async fn client(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let mut cfg =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    cfg.read_timeout = Some(Duration::from_secs(120));
    Ok(kube::Client::try_from(cfg)?)
}

/// Polls every 20 ms until the kubeconfig exists and `/readyz` answers 200; returns when.
pub async fn wait_ready(
    p: &mut Proc,
    kubeconfig: &Path,
    limit: Duration,
) -> anyhow::Result<Duration> {
    let deadline = Instant::now() + limit;
    let mut client_ = None;
    loop {
        if !p.alive() {
            bail!("{} exited:\n{}", p.name, p.log_tail());
        }
        if client_.is_none() && kubeconfig.exists() {
            client_ = client(kubeconfig).await.ok();
        }
        if let Some(c) = &client_ {
            let req = http::Request::get("/readyz").body(Vec::new())?;
            if let Ok(text) = c.request_text(req).await
                && text.trim() == "ok"
            {
                return Ok(p.started.elapsed());
            }
        }
        if Instant::now() > deadline {
            bail!("{} not ready after {limit:?}:\n{}", p.name, p.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// True if the Node's Ready condition is True.
pub fn node_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Polls every 50 ms until `node` is Ready; returns the time since `since`.
pub async fn wait_node_ready(
    c: &kube::Client,
    node: &str,
    since: Instant,
    watch: &mut Proc,
    limit: Duration,
) -> anyhow::Result<Duration> {
    let nodes: Api<Node> = Api::all(c.clone());
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(n)) = nodes.get_opt(node).await
            && node_ready(&n)
        {
            return Ok(since.elapsed());
        }
        if !watch.alive() {
            bail!("{} exited:\n{}", watch.name, watch.log_tail());
        }
        if Instant::now() > deadline {
            bail!(
                "node {node} not Ready after {limit:?}:\n{}",
                watch.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn pod_running(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

/// A busybox pod that sleeps, pinned to `node`, able to stop at once.
pub fn sleeper(name: &str, node: &str, image: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"r3s-bench": "sleeper"}},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "c", "image": image, "command": ["sleep", "86400"]}]}
    }))?)
}

/// Sums the sizes of `state.db` and its WAL/SHM under a server data dir.
pub fn db_bytes(data_dir: &Path) -> u64 {
    ["state.db", "state.db-wal", "state.db-shm"]
        .iter()
        .map(|f| std::fs::metadata(data_dir.join("server/db").join(f)).map_or(0, |m| m.len()))
        .sum()
}

/// The image every pod runs: busybox-static in a docker-registry in this namespace, reachable
/// from the agent's namespace through a TCP relay on the veth address.
pub struct ImageSource {
    /// Kept for its drop guard: the registry process lives as long as this.
    pub _registry: crate::registry::Registry,
    pub image: String,
    /// registries.yaml for the server's node (127.0.0.1) and for the lone agent (the relay).
    pub server_yaml: PathBuf,
    pub agent_yaml: PathBuf,
    _relay: tokio::task::JoinHandle<()>,
}

pub async fn image_source(dir: &Path) -> anyhow::Result<ImageSource> {
    use crate::registry as support;
    let reg = support::Registry::start();
    let bb = std::fs::read("/bin/busybox").context("/bin/busybox (package busybox-static)")?;
    let mut entries = vec![
        support::Entry::Dir("bin", 0o755),
        support::Entry::File("bin/busybox", bb, 0o755),
        support::Entry::Dir("tmp", 0o1777),
    ];
    for applet in ["sh", "sleep", "true"] {
        entries.push(support::Entry::Symlink(
            Box::leak(format!("bin/{applet}").into_boxed_str()),
            "busybox",
        ));
    }
    let arch = std::env::consts::ARCH
        .replace("x86_64", "amd64")
        .replace("aarch64", "arm64");
    let img = support::image(
        vec![support::layer(&entries, support::Compression::Gzip)],
        &arch,
        None,
        false,
    );
    reg.push(
        "busybox",
        "1",
        &img,
        &oci_client::secrets::RegistryAuth::Anonymous,
    )
    .await;
    let image = format!("{}/busybox:1", reg.addr);
    // The agent's namespace reaches this one only on the veth: relay SERVER_IP:<port> to the
    // registry, and tell the agent's registries.yaml to use it for the same image name.
    let port: u16 = reg
        .addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .context("port")?;
    let relay_addr = format!("{SERVER_IP}:{port}");
    let listener = tokio::net::TcpListener::bind(&relay_addr).await?;
    let upstream = reg.addr.clone();
    let relay = tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let up = upstream.clone();
            tokio::spawn(async move {
                if let Ok(mut out) = tokio::net::TcpStream::connect(&up).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    let server_yaml = dir.join("registries.yaml");
    std::fs::write(
        &server_yaml,
        format!(
            "mirrors:\n  \"{0}\":\n    endpoint:\n      - \"http://{0}\"\n",
            reg.addr
        ),
    )?;
    let agent_yaml = dir.join("registries-agent.yaml");
    std::fs::write(
        &agent_yaml,
        format!(
            "mirrors:\n  \"{}\":\n    endpoint:\n      - \"http://{relay_addr}\"\n",
            reg.addr
        ),
    )?;
    Ok(ImageSource {
        _registry: reg,
        image,
        server_yaml,
        agent_yaml,
        _relay: relay,
    })
}
