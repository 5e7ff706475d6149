//! Joining, end to end, with the real binaries over real TLS: `r3s-server --disable-agent` and
//! `r3s-agent --server … --token …`, both inside a network namespace the test creates (so the pod
//! bridge and masquerade table the agent makes when its Node gets a podCIDR never touch the
//! host), talking over that namespace's 127.0.0.1.
//!
//! Checked: the Node registers and becomes Ready (admin kubectl); the node's own kubeconfig may
//! label its Node but gets Forbidden on another Node; a wrong token exits 1 naming the server
//! (401); a token with another CA hash exits 1 before any authenticated request reaches the server;
//! a second machine (another data dir, so another node password) claiming the same node name is
//! refused with the `--with-node-id` hint; a join with the node id appends a stable suffix.
//!
//! `r3s-server` is not this crate's binary: it is taken from the same target directory, where
//! `cargo test --workspace` (tests/run) builds it; with `cargo test -p r3s-agent` build it first
//! (`cargo build -p r3s-server`). Needs root (network namespaces), `ip` and kubectl.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const AGENT: &str = env!("CARGO_BIN_EXE_r3s-agent");
const KUBECTL: &str = "/usr/bin/kubectl";

fn server_bin() -> PathBuf {
    Path::new(AGENT).with_file_name("r3s-server")
}

/// True if `ok`; otherwise `skipped: <what>` (or a failure when CI=true).
fn require(what: &str, ok: bool) -> bool {
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "missing prerequisite: {what}"
        );
        println!("skipped: needs {what}");
    }
    ok
}

/// A network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(name: &str) -> Netns {
        let ok = |args: &[&str]| {
            let status = Command::new("ip").args(args).status().unwrap();
            assert!(status.success(), "ip {args:?}");
        };
        ok(&["netns", "add", name]);
        let ns = Netns(name.to_owned());
        ok(&["-n", name, "link", "set", "lo", "up"]);
        ns
    }

    /// `cmd` run inside the namespace (`ip netns exec` execs it: the PID is the command's).
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.0, program]);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A process the test started: SIGTERM by PID on drop, SIGKILL if it does not end.
struct Proc {
    child: Option<Child>,
    what: &'static str,
}

impl Proc {
    fn spawn(mut cmd: Command, log: &Path, what: &'static str) -> Proc {
        let out = std::fs::File::create(log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Proc {
            child: Some(child),
            what,
        }
    }

    fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGTERM and wait; returns the exit status, or `None` if it had to be killed.
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("{} did not stop on SIGTERM; killing it", self.what);
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn eventually<T>(what: &str, limit: Duration, log: &Path, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("timed out waiting for {what}; log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn agent_joins_with_the_token_and_is_confined_to_its_node() {
    if !require("root", nix::unistd::geteuid().is_root())
        || !require("kubectl", Path::new(KUBECTL).exists())
        || !require(
            "the ip command",
            Command::new("ip").arg("-V").output().is_ok(),
        )
        || !require(
            &format!(
                "{} (build it: cargo build -p r3s-server)",
                server_bin().display()
            ),
            server_bin().exists(),
        )
    {
        return;
    }
    let uniq = format!("r3st{}j", std::process::id());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("home")).unwrap();
    let ns = Netns::new(&uniq);
    // Any port is free in a fresh namespace; take one the host also has free, for readability.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("https://127.0.0.1:{port}");

    let server_log = dir.join("server.log");
    let mut server_cmd = ns.command(server_bin().to_str().unwrap());
    server_cmd.args([
        "--disable-agent",
        "--data-dir",
        dir.join("server").to_str().unwrap(),
        "--https-listen-port",
        &port.to_string(),
        "--write-kubeconfig",
        dir.join("admin.yaml").to_str().unwrap(),
    ]);
    let mut server = Proc::spawn(server_cmd, &server_log, "r3s-server");

    let kubectl = |kubeconfig: &Path, args: &[&str]| -> (bool, String, String) {
        let out = ns
            .command(KUBECTL)
            .env("KUBECONFIG", kubeconfig)
            .env("HOME", dir.join("home"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        (out.status.success(), stdout, stderr)
    };
    let admin = dir.join("admin.yaml");
    eventually(
        "the API server",
        Duration::from_secs(60),
        &server_log,
        || {
            assert!(server.running(), "r3s-server exited");
            kubectl(&admin, &["get", "namespace", "default"])
                .0
                .then_some(())
        },
    );

    // The token file: K10<sha256 of the CA served at /cacerts>::server:<secret>, mode 0600.
    let token_path = dir.join("server/server/token");
    assert_eq!(mode(&token_path), 0o600);
    let token = std::fs::read_to_string(&token_path)
        .unwrap()
        .trim()
        .to_owned();
    let ca = std::fs::read(dir.join("server/server/tls/server-ca.crt")).unwrap();
    let hash = r3s_agent::join::token::ca_hash(&ca);
    let secret = token
        .strip_prefix(&format!("K10{hash}::server:"))
        .unwrap_or_else(|| panic!("token {token} does not carry the CA hash {hash}"))
        .to_owned();

    let agent = |data: &str, name: &str, token: &str| {
        let mut cmd = ns.command(AGENT);
        cmd.args([
            "--server",
            &url,
            "--token",
            token,
            "--data-dir",
            dir.join(data).to_str().unwrap(),
            "--node-name",
            name,
            "--node-ip",
            "127.0.0.1",
        ]);
        cmd
    };
    let node = format!("{uniq}-a");

    // A wrong secret: 401 from the server, one line naming it, exit status 1.
    let out = agent("wrong", &node, &format!("K10{hash}::server:wrong"))
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with("r3s-agent: ") && last.contains(&url) && last.contains("401"),
        "{stderr}"
    );

    // Another cluster's CA hash: refused before any authenticated request is made.
    let join_requests = || {
        std::fs::read_to_string(&server_log)
            .unwrap()
            .matches("join request")
            .count()
    };
    let before = join_requests();
    assert!(before > 0, "the wrong-token attempt was not logged");
    let other_hash = r3s_agent::join::token::ca_hash(b"another cluster's CA");
    let out = agent("badca", &node, &format!("K10{other_hash}::server:{secret}"))
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&url) && stderr.contains(&other_hash) && stderr.contains(&hash),
        "{stderr}"
    );
    assert_eq!(
        join_requests(),
        before,
        "a request reached the join endpoints"
    );
    assert!(!dir.join("badca/agent/node-password").exists());

    // The real join.
    let agent_log = dir.join("agent-a.log");
    // systemd's readiness protocol: READY=1 arrives on NOTIFY_SOCKET once the Node exists.
    let notify_path = dir.join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut agent_cmd = agent("a", &node, &token);
    agent_cmd.env("NOTIFY_SOCKET", &notify_path);
    let mut agent_a = Proc::spawn(agent_cmd, &agent_log, "r3s-agent");
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("READY=1 from the agent");
    assert!(
        String::from_utf8_lossy(&buf[..n]).contains("READY=1"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    let (ok, _, err) = kubectl(&admin, &["get", "node", &node]);
    assert!(ok, "READY=1 before the Node was registered: {err}");
    eventually(
        "the Node to be Ready",
        Duration::from_secs(150),
        &agent_log,
        || {
            assert!(agent_a.running(), "r3s-agent exited");
            let (ok, out, _) = kubectl(
                &admin,
                &[
                    "get",
                    "node",
                    &node,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                ],
            );
            (ok && out == "True").then_some(())
        },
    );
    let kubelet = dir.join("a/agent/kubelet.kubeconfig");
    assert_eq!(mode(&kubelet), 0o600);
    assert_eq!(mode(&dir.join("a/agent/node-password")), 0o600);
    let (ok, out, err) = kubectl(
        &kubelet,
        &["auth", "whoami", "-o", "jsonpath={.status.userInfo}"],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("system:node:{node}")) && out.contains("system:nodes"),
        "{out}"
    );
    let (ok, _, err) = kubectl(&kubelet, &["label", "node", &node, "r3s.test/own=yes"]);
    assert!(ok, "a node may label itself: {err}");

    // The kubelet API: served with a certificate the server issued at join (server CA, node IP
    // SAN), open to the API server's client certificate only.
    let tls = dir.join("server/server/tls");
    let curl = |cert: &str| {
        let out = ns
            .command("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(tls.join("server-ca.crt"))
            .arg("--cert")
            .arg(tls.join(format!("{cert}.crt")))
            .arg("--key")
            .arg(tls.join(format!("{cert}.key")))
            .args(["-w", " %{http_code}", "https://127.0.0.1:10250/healthz"])
            .output()
            .unwrap();
        text(&out)
    };
    let (out, err) = eventually(
        "the kubelet API",
        Duration::from_secs(60),
        &agent_log,
        || {
            let (out, err) = curl("client-kube-apiserver");
            out.ends_with(" 200").then_some((out, err))
        },
    );
    assert!(out.starts_with("ok"), "{out}{err}");
    let (out, err) = curl("client-admin");
    assert!(
        out.ends_with(" 403") && out.contains("user=system:admin"),
        "{out}{err}"
    );

    // Another Node is out of reach.
    let other = format!("{uniq}-other");
    let manifest = dir.join("other-node.yaml");
    std::fs::write(
        &manifest,
        format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {other}\n"),
    )
    .unwrap();
    let (ok, _, err) = kubectl(&admin, &["create", "-f", manifest.to_str().unwrap()]);
    assert!(ok, "{err}");
    for args in [
        vec!["label", "node", &other, "r3s.test/hijack=yes"],
        vec!["delete", "node", &other],
    ] {
        let (ok, _, err) = kubectl(&kubelet, &args);
        assert!(!ok, "kubectl {args:?} as the node succeeded");
        assert!(
            err.contains("Forbidden")
                && err.contains(&format!(
                    "node \"{node}\" is not allowed to modify node \"{other}\""
                )),
            "{err}"
        );
    }
    let (ok, _, err) = kubectl(&kubelet, &["get", "secrets", "-n", "kube-system"]);
    assert!(!ok && err.contains("Forbidden"), "{err}");

    // A second machine claiming the same name (another data dir: another node password).
    let out = agent("b", &node, &token).output().unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&url)
            && stderr.contains(&format!("\"{node}\""))
            && stderr.contains("--with-node-id")
            && stderr.contains(&format!("kube-system/{node}.node-password.r3s")),
        "{stderr}"
    );

    // The hint's other way out: once the Secret is removed, the name is free for a new password.
    let (ok, _, err) = kubectl(
        &admin,
        &[
            "-n",
            "kube-system",
            "delete",
            "secret",
            &format!("{node}.node-password.r3s"),
        ],
    );
    assert!(ok, "{err}");
    let out = in_netns_join(&uniq, &url, &token, &dir.join("b2"), &node, false);
    assert!(out.is_ok(), "{:?}", out.err());
    // And the first machine is now the stranger: its next join is refused.
    let refused = in_netns_join(&uniq, &url, &token, &dir.join("a"), &node, false).unwrap_err();
    assert!(
        matches!(refused, r3s_agent::join::JoinError::Refused { .. }),
        "{refused}"
    );

    // With the node id (the join library; the flag is not on the command line yet), the second
    // machine joins as <name>-<id>, and keeps that name.
    let join_b = || in_netns_join(&uniq, &url, &token, &dir.join("b"), &node, true);
    let joined = join_b().unwrap();
    assert!(
        joined.node_name.starts_with(&format!("{node}-"))
            && joined.node_name.len() == node.len() + 9,
        "{}",
        joined.node_name
    );
    assert_eq!(join_b().unwrap().node_name, joined.node_name);
    let (ok, out, err) = kubectl(
        &joined.kubeconfig,
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(out, format!("system:node:{}", joined.node_name));

    // Bootstrap tokens: `r3s-server token create` prints a K10 token that joins, authenticates
    // as system:bootstrap:<id>, is listed, and stops working once deleted.
    let token_cmd = |args: &[&str]| {
        let out = ns
            .command(server_bin().to_str().unwrap())
            .arg("token")
            .args(args)
            .args(["--kubeconfig", admin.to_str().unwrap()])
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "token {args:?}: {stderr}");
        stdout
    };
    let boot = token_cmd(&["create", "--ttl", "1h", "--description", "e2e"])
        .trim()
        .to_owned();
    let (id_secret, id) = {
        let s = boot
            .strip_prefix(&format!("K10{hash}::"))
            .unwrap_or_else(|| panic!("{boot} does not carry the CA hash"));
        (s.to_owned(), s.split('.').next().unwrap().to_owned())
    };
    let join_with = |token: &str, data: &str, name: &str| {
        in_netns_join(&uniq, &url, token, &dir.join(data), name, false)
    };
    let joined_c = join_with(&boot, "c", &format!("{uniq}-c")).unwrap();
    assert!(joined_c.kubeconfig.exists());
    let boot_kubeconfig = dir.join("bootstrap.yaml");
    std::fs::write(
        &boot_kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {url}\n    certificate-authority: {}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user:\n    token: {id_secret}\n",
            dir.join("server/server/tls/server-ca.crt").display()
        ),
    )
    .unwrap();
    let (ok, out, err) = kubectl(
        &boot_kubeconfig,
        &["auth", "whoami", "-o", "jsonpath={.status.userInfo}"],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("system:bootstrap:{id}")) && out.contains("system:bootstrappers"),
        "{out}"
    );
    let listed = token_cmd(&["list"]);
    assert!(
        listed.contains(&id_secret) && listed.contains("e2e"),
        "{listed}"
    );
    token_cmd(&["delete", &id]);
    assert!(!token_cmd(&["list"]).contains(&id_secret));
    let refused = join_with(&boot, "d", &format!("{uniq}-d")).unwrap_err();
    assert!(
        matches!(refused, r3s_agent::join::JoinError::Unauthorized { .. }),
        "{refused}"
    );
    let (ok, _, err) = kubectl(&boot_kubeconfig, &["auth", "whoami"]);
    assert!(!ok && err.contains("Unauthorized"), "{err}");

    // SIGTERM stops the agent cleanly.
    let status = agent_a.stop().expect("the agent stops on SIGTERM");
    assert!(status.success(), "r3s-agent exited with {status}");
    // The short form (the secret alone) joins too, trusting the CA on first use.
    let joined_e = join_with(&secret, "e", &format!("{uniq}-e")).unwrap();
    assert!(joined_e.kubeconfig.exists());

    let status = server.stop().expect("the server stops on SIGTERM");
    assert!(status.success(), "r3s-server exited with {status}");

    // Restarting reuses the token; a full token with another CA hash is refused at start.
    let server_args = |extra: &[&str]| {
        let mut cmd = ns.command(server_bin().to_str().unwrap());
        cmd.args([
            "--disable-agent",
            "--data-dir",
            dir.join("server").to_str().unwrap(),
            "--https-listen-port",
            &port.to_string(),
            "--write-kubeconfig",
            dir.join("admin.yaml").to_str().unwrap(),
        ])
        .args(extra);
        cmd
    };
    let out = server_args(&["--token", &format!("K10{other_hash}::server:{secret}")])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with("r3s-server: --token: the token's CA hash") && last.contains(&other_hash),
        "{stderr}"
    );
    let restart_log = dir.join("server-restart.log");
    let mut restarted = Proc::spawn(server_args(&[]), &restart_log, "r3s-server");
    eventually(
        "the restarted API server",
        Duration::from_secs(60),
        &restart_log,
        || {
            assert!(restarted.running(), "r3s-server exited");
            kubectl(&admin, &["get", "namespace", "default"])
                .0
                .then_some(())
        },
    );
    let again = std::fs::read_to_string(&token_path).unwrap();
    assert_eq!(again.trim(), token, "the token changed across a restart");
    let status = restarted.stop().expect("the server stops on SIGTERM");
    assert!(status.success(), "r3s-server exited with {status}");
}

/// [`r3s_agent::join::join`] from inside the test's network namespace.
fn in_netns_join(
    ns: &str,
    url: &str,
    token: &str,
    data_dir: &Path,
    name: &str,
    with_node_id: bool,
) -> Result<r3s_agent::join::Joined, r3s_agent::join::JoinError> {
    let opts = r3s_agent::join::JoinOptions {
        server: url.parse().unwrap(),
        token: token.to_owned(),
        data_dir: data_dir.to_owned(),
        node_name: name.to_owned(),
        with_node_id,
    };
    in_netns(ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(r3s_agent::join::join(&opts))
    })
}

/// Runs `f` on a thread that has entered network namespace `name` (namespaces are per thread).
fn in_netns<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{name}");
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).unwrap();
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}
