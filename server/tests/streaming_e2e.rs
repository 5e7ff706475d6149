//! `kubectl logs`, `exec`, `attach` and `port-forward` end to end, as root: the real `r3s-server`
//! (API, scheduler, in-process agent with its kubelet API on :10250), a real `docker-registry`
//! with a busybox-static image, real youki containers and the real kubectl 1.32, plus the Python
//! client for exec over the channel protocol and its plain-WebSocket port-forward.
//!
//! Everything runs inside a network namespace this test creates (unique name, deleted by a
//! guard): the test thread enters it before starting anything, so the registry, the server (its
//! pod bridge, DNS link, nftables tables, kubelet port) and every kubectl it spawns live there and
//! never meet `cluster_e2e.rs`'s host-wide objects.

#![allow(clippy::unwrap_used)]

#[path = "../../images/tests/support/mod.rs"]
mod support;

#[path = "support/binary.rs"]
mod binary;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use binary::{KUBECTL, Server, free_port};
use oci_client::secrets::RegistryAuth;
use support::{Registry, require};

/// A network namespace made for this test; deleted on drop (with every link and table in it).
struct Netns {
    name: String,
}

impl Netns {
    fn create() -> Netns {
        let name = format!("r3st{}s", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip netns add {name}");
        let ns = Netns { name };
        let ok = Command::new("ip")
            .args(["-n", &ns.name, "link", "set", "lo", "up"])
            .status()
            .unwrap()
            .success();
        assert!(ok, "lo up in {}", ns.name);
        ns
    }

    /// Moves the calling thread (and so every thread and process it starts later) into the
    /// namespace.
    fn enter(&self) {
        let f = std::fs::File::open(format!("/run/netns/{}", self.name)).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// A child process killed by PID on drop (kubectl -f, attach, port-forward).
struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Env {
    dir: PathBuf,
}

impl Env {
    fn cmd(&self, args: &[&str]) -> Command {
        binary::kubectl_command(&self.dir, args)
    }

    fn kubectl(&self, args: &[&str]) -> (i32, String, String) {
        self.kubectl_in(args, None)
    }

    fn kubectl_in(&self, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
        let mut child = self
            .cmd(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(input) = stdin {
            let mut w = child.stdin.take().unwrap();
            w.write_all(input.as_bytes()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.kubectl(args);
        assert_eq!(code, 0, "kubectl {args:?}: {out}{err}\n{}", self.log_tail());
        out
    }

    fn log_tail(&self) -> String {
        binary::log_tail(&self.dir)
    }

    fn eventually<T>(&self, what: &str, limit: Duration, f: impl FnMut() -> Option<T>) -> T {
        binary::eventually(&self.dir, what, limit, f)
    }
}

/// Reads lines from a child's stdout on a thread, until one satisfies `want`.
fn read_until(
    out: impl Read + Send + 'static,
    want: impl Fn(&str) -> bool + Send + 'static,
) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Keep reading after the match: a Go program whose stdout pipe is closed dies of SIGPIPE
        // at its next write (kubectl port-forward prints a line per connection).
        let mut sent = false;
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if !sent && want(&line) {
                let _ = tx.send(line);
                sent = true;
            }
        }
    });
    rx
}

fn http_get(port: u16) -> Option<String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(b"GET /index.html HTTP/1.0\r\nHost: pod\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

async fn push_image(reg: &Registry) -> String {
    let img = support::busybox_image(
        &[
            "sh", "echo", "sleep", "httpd", "cat", "date", "test", "tty", "true", "wc",
        ],
        &[],
    );
    reg.push("busybox", "1", &img, &RegistryAuth::Anonymous)
        .await;
    format!("{}/busybox:1", reg.addr)
}

const POD: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: box
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: IMAGE
    command: ["sh", "-c", "echo line-one; echo err-one >&2; i=0; while true; do i=$((i+1)); echo tick-$i; sleep 1; done"]
  - name: web
    image: IMAGE
    command: ["sh", "-c", "echo hello-from-pod > /tmp/index.html && exec httpd -f -p 80 -h /tmp"]
  - name: crash
    image: IMAGE
    command: ["sh", "-c", "echo run-marker; sleep 2; exit 7"]
"#;

#[test]
fn kubectl_logs_exec_attach_port_forward() {
    if !require("root", support::is_root())
        || !require("docker-registry", support::have_registry())
        || !require("busybox-static", support::have_busybox())
        || !require("kubectl", Path::new(KUBECTL).exists())
        || !require("script (util-linux)", Path::new("/usr/bin/script").exists())
        || !require(
            "the Python kubernetes client (python3 -c 'import kubernetes')",
            Command::new("python3")
                .args(["-c", "import kubernetes"])
                .output()
                .is_ok_and(|o| o.status.success()),
        )
    {
        return;
    }
    let netns = Netns::create();
    netns.enter();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let env = Env {
        dir: tmp.path().to_path_buf(),
    };
    let dir = &env.dir;
    std::fs::create_dir_all(dir.join("home")).unwrap();
    let reg = Registry::start();
    let image = rt.block_on(push_image(&reg));
    let registries = binary::plain_http_mirror(dir, &reg.addr);
    let node = format!("r3st-stream-{}", std::process::id());
    let mut cmd = binary::command(dir, free_port(), &node);
    cmd.env(
        "RUST_LOG",
        "info,r3s_agent::kubelet=debug,r3s_server::api::kubelet_proxy=debug",
    )
    .args(["--node-ip", "127.0.0.1", "--private-registry"])
    .arg(&registries);
    // SIGTERM first on a failed test, so the agent stops the pods it started.
    let server = Server::spawn(cmd, &dir.join("server.log"), Duration::from_secs(120));
    env.eventually("the node Ready", Duration::from_secs(120), || {
        let (code, out, _) = env.kubectl(&[
            "get",
            "node",
            &node,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ]);
        (code == 0 && out == "True").then_some(())
    });
    let manifest = dir.join("pod.yaml");
    std::fs::write(&manifest, POD.replace("IMAGE", &image)).unwrap();
    env.ok(&["apply", "-f", manifest.to_str().unwrap()]);
    env.ok(&["wait", "--for=condition=Ready", "pod/box", "--timeout=180s"]);

    // --- logs ---------------------------------------------------------------------------
    let out = env.eventually("tick-3 in the logs", Duration::from_secs(60), || {
        let (code, out, _) = env.kubectl(&["logs", "box", "-c", "main"]);
        (code == 0 && out.contains("tick-3")).then_some(out)
    });
    // stdout and stderr are copied by separate tasks: their relative order is not fixed.
    assert!(
        out.starts_with("line-one\n") || out.starts_with("err-one\n"),
        "{out}"
    );
    assert!(
        out.contains("\nerr-one\n") || out.starts_with("err-one\n"),
        "{out}"
    );
    let tail = env.ok(&["logs", "box", "-c", "main", "--tail=2"]);
    assert_eq!(tail.lines().count(), 2, "{tail}");
    assert!(tail.lines().all(|l| l.starts_with("tick-")), "{tail}");
    let stamped = env.ok(&["logs", "box", "-c", "main", "--timestamps", "--tail=1"]);
    let (ts, text) = stamped.trim_end().split_once(' ').unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(ts).is_ok(),
        "{stamped}"
    );
    assert!(text.starts_with("tick-"), "{stamped}");
    let limited = env.ok(&["logs", "box", "-c", "main", "--limit-bytes=4"]);
    assert_eq!(limited.len(), 4, "{limited}");
    // Without -c, kubectl picks the first container itself.
    let (code, out, err) = env.kubectl(&["logs", "box", "--tail=1"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("tick-"), "{out}");
    assert!(err.contains("Defaulted container \"main\""), "{err}");

    // -f sees a line written after it started.
    let last: u64 = tail
        .lines()
        .filter_map(|l| l.strip_prefix("tick-")?.parse().ok())
        .max()
        .unwrap();
    let mut follow = Kid(env
        .cmd(&["logs", "-f", "box", "-c", "main", "--tail=1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap());
    let lines = read_until(follow.0.stdout.take().unwrap(), move |l| {
        l.strip_prefix("tick-")
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n > last + 2)
    });
    let newer = lines
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("logs -f saw no new line; {}", env.log_tail()));
    assert!(newer.starts_with("tick-"));
    drop(follow);

    // --previous after the crash container restarted.
    env.eventually("crash restarted", Duration::from_secs(120), || {
        let (code, out, _) = env.kubectl(&[
            "get",
            "pod",
            "box",
            "-o",
            "jsonpath={.status.containerStatuses[?(@.name==\"crash\")].restartCount}",
        ]);
        (code == 0 && out.parse::<u32>().is_ok_and(|n| n >= 1)).then_some(())
    });
    let prev = env.ok(&["logs", "box", "-c", "crash", "--previous"]);
    assert_eq!(prev, "run-marker\n");
    let (code, _, err) = env.kubectl(&["logs", "box", "-c", "main", "--previous"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("previous terminated container \"main\""),
        "{err}"
    );

    // --- exec -------------------------------------------------------------------------
    let (code, out, err) = env.kubectl(&[
        "exec",
        "box",
        "-c",
        "main",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(code, 3, "{out}{err}");
    assert_eq!(out, "out\n");
    assert!(err.starts_with("err\n"), "{err}");
    assert!(err.contains("command terminated with exit code 3"), "{err}");
    let (code, out, err) = env.kubectl(&["exec", "box", "-c", "main", "--", "echo", "ok"]);
    assert_eq!((code, out.as_str()), (0, "ok\n"), "{err}");
    let (code, out, err) = env.kubectl_in(
        &["exec", "-i", "box", "-c", "main", "--", "cat"],
        Some("piped-line-1\npiped-line-2\n"),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "piped-line-1\npiped-line-2\n");
    // A TTY: kubectl needs a terminal on its own stdin for -t, so run it under script(1).
    let kubectl_cmd = format!(
        "KUBECONFIG={} HOME={} {KUBECTL} exec -it box -c main -- sh -c 'test -t 0 && test -t 1 && echo IS-A-TTY'",
        dir.join("kubeconfig.yaml").display(),
        dir.join("home").display()
    );
    let out = Command::new("script")
        .args(["-qec", &kubectl_cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("IS-A-TTY"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A missing container is a clear error.
    let (code, _, err) = env.kubectl(&["exec", "box", "-c", "nope", "--", "true"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("container nope is not valid for pod box"),
        "{err}"
    );

    // The Python client: exec over the channel protocol.
    let py = r#"
import sys
from kubernetes import client, config
from kubernetes.stream import stream
config.load_kube_config(sys.argv[1])
api = client.CoreV1Api()
out = stream(api.connect_get_namespaced_pod_exec, "box", "default", container="main",
             command=["sh", "-c", "echo py-out; exit 0"], stderr=True, stdin=False, stdout=True, tty=False)
print("EXEC:" + out.strip())
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(py)
        .arg(dir.join("kubeconfig.yaml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("EXEC:py-out"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // --- attach -----------------------------------------------------------------------
    let mut attach = Kid(env
        .cmd(&["attach", "box", "-c", "main"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap());
    let seen = read_until(attach.0.stdout.take().unwrap(), |l| l.starts_with("tick-"));
    seen.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("attach showed no output; {}", env.log_tail()));
    drop(attach);

    // --- port-forward -----------------------------------------------------------------
    let local = free_port();
    let mut pf = Kid(env
        .cmd(&["port-forward", "-v=6", "pod/box", &format!("{local}:80")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("pf.log")).unwrap())
        .spawn()
        .unwrap());
    let ready = read_until(pf.0.stdout.take().unwrap(), |l| {
        l.starts_with("Forwarding from")
    });
    ready
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("port-forward did not start; {}", env.log_tail()));
    for _ in 0..2 {
        let body = http_get(local).unwrap_or_default();
        assert!(
            body.contains("hello-from-pod"),
            "{body}\nkubectl: {}\n{}",
            std::fs::read_to_string(dir.join("pf.log")).unwrap_or_default(),
            env.log_tail()
        );
    }
    drop(pf);
    // Without the WebSocket tunnel: raw SPDY.
    let local = free_port();
    let mut pf = Kid(env
        .cmd(&["port-forward", "pod/box", &format!("{local}:80")])
        .env("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap());
    let ready = read_until(pf.0.stdout.take().unwrap(), |l| {
        l.starts_with("Forwarding from")
    });
    ready.recv_timeout(Duration::from_secs(60)).unwrap();
    let body = http_get(local).unwrap_or_default();
    assert!(
        body.contains("hello-from-pod"),
        "{body}\n{}",
        env.log_tail()
    );
    drop(pf);

    // The Python client's plain WebSocket port-forward (v4.channel.k8s.io).
    let py = r#"
import sys
from kubernetes import client, config
from kubernetes.stream import portforward
config.load_kube_config(sys.argv[1])
api = client.CoreV1Api()
pf = portforward(api.connect_get_namespaced_pod_portforward, "box", "default", ports="80")
s = pf.socket(80)
s.setblocking(True)
s.sendall(b"GET /index.html HTTP/1.0\r\nHost: pod\r\n\r\n")
data = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
    if b"hello-from-pod" in data:
        break
s.close()
print("PF:" + ("ok" if b"hello-from-pod" in data else repr(data)))
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(py)
        .arg(dir.join("kubeconfig.yaml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("PF:ok"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // --- errors from the proxy ---------------------------------------------------------
    let stuck = dir.join("stuck.yaml");
    std::fs::write(
        &stuck,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: pending}}\nspec:\n  nodeSelector: {{nowhere: \"true\"}}\n  containers: [{{name: c, image: \"{image}\"}}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: ghost}}\nspec:\n  nodeName: ghost-node\n  containers: [{{name: c, image: \"{image}\"}}]\n"
        ),
    )
    .unwrap();
    env.ok(&["apply", "-f", stuck.to_str().unwrap()]);
    let (code, _, err) = env.kubectl(&["logs", "pending"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("pod pending does not have a host assigned"),
        "{err}"
    );
    let (code, _, err) = env.kubectl(&["logs", "ghost"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("ServiceUnavailable") && err.contains("ghost-node"),
        "{err}"
    );
    let (code, _, err) = env.kubectl(&["logs", "nosuchpod"]);
    assert_ne!(code, 0);
    assert!(err.contains("pods \"nosuchpod\" not found"), "{err}");
    env.ok(&["delete", "-f", stuck.to_str().unwrap(), "--wait=false"]);

    // --- RBAC ---------------------------------------------------------------------------
    env.ok(&["create", "serviceaccount", "viewer"]);
    env.ok(&[
        "create",
        "rolebinding",
        "viewer-view",
        "--clusterrole=view",
        "--serviceaccount=default:viewer",
    ]);
    let token = env.ok(&["create", "token", "viewer"]);
    let server_url = env.ok(&[
        "config",
        "view",
        "-o",
        "jsonpath={.clusters[0].cluster.server}",
    ]);
    let ca = env.ok(&[
        "config",
        "view",
        "--raw",
        "-o",
        "jsonpath={.clusters[0].cluster.certificate-authority-data}",
    ]);
    let viewer_cfg = dir.join("viewer.yaml");
    std::fs::write(
        &viewer_cfg,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"{server_url}\", certificate-authority-data: {ca}}}}}]\nusers: [{{name: v, user: {{token: {}}}}}]\ncontexts: [{{name: c, context: {{cluster: c, user: v, namespace: default}}}}]\ncurrent-context: c\n",
            token.trim()
        ),
    )
    .unwrap();
    let viewer = |args: &[&str]| {
        let out = Command::new(KUBECTL)
            .env("KUBECONFIG", &viewer_cfg)
            .env("HOME", dir.join("home"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = viewer(&["logs", "box", "-c", "main", "--tail=1"]);
    assert_eq!(code, 0, "view may read logs: {out}{err}");
    let (code, _, err) = viewer(&["exec", "box", "-c", "main", "--", "true"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("Forbidden") || err.contains("forbidden"),
        "{err}"
    );

    env.ok(&["delete", "pod", "box", "--wait=true", "--timeout=120s"]);
    let status = server.stop(Duration::from_secs(90));
    assert!(status.success(), "exit status {status}");
    drop(reg);
    drop(rt);
    drop(netns);
}
