//! Surviving agent restarts (issue 6, resilience; see `agent/src/restart.rs`), with the real
//! binaries on a two-node cluster ([`cluster`] harness: `r3s-server` on host 1, `r3s-agent` on
//! host 2), pods pinned to host 2.
//!
//! Checked: after `kill -9` of the agent and a restart, and again after SIGTERM and a restart,
//! the running containers are the same (container id, init PID) with `restartCount` unchanged,
//! a TCP connection from host 1 to the pod opened before the kill still gets its answer, the pod
//! keeps its IP, and the container log kept growing while no agent ran; a container that exited
//! (code 7) while the agent was down is reported with that exit code and restarted once; a pod
//! deleted while the agent was down is stopped at its next start (its init gone, its state file
//! removed); deleting the re-adopted pod leaves no container state, shim directory, state file,
//! sandbox or cgroup behind.
//!
//! Also `kubectl attach -i` (through re-adopted shims): input reaches a `stdin: true`
//! container; with `stdinOnce` the end of the first attach is EOF for it (it exits 0), a second
//! attach is refused; without it, a second attach feeds the same stdin; a container without
//! `stdin: true` refuses `-i` with a clear message.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)]

#[path = "../../images/tests/support/mod.rs"]
mod support;

mod cluster;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use cluster::{Cluster, eventually};
use nix::sys::signal::Signal;

fn pods(image: &str, node: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: keep
  labels: {{app: keep}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 2
  containers:
  - name: web
    image: {image}
    command: ["sh", "-c", "echo kept > /tmp/index.html && exec httpd -f -p 8080 -h /tmp"]
  - name: ticker
    image: {image}
    command: ["sh", "-c", "while true; do echo tick; sleep 1; done"]
  - name: quitter
    image: {image}
    command: ["sh", "-c", "while ! test -e /tmp/quit; do sleep 1; done; exit 7"]
---
apiVersion: v1
kind: Pod
metadata:
  name: talker
spec:
  nodeName: {node}
  restartPolicy: Never
  terminationGracePeriodSeconds: 2
  containers:
  - name: once
    image: {image}
    stdin: true
    stdinOnce: true
    command: ["sh", "-c", "while read line; do echo got:$line; done; echo eof"]
  - name: open
    image: {image}
    stdin: true
    command: ["sh", "-c", "while read line; do echo got:$line; done; echo eof"]
---
apiVersion: v1
kind: Pod
metadata:
  name: orphan
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 2
  containers:
  - name: sleeper
    image: {image}
    command: ["sh", "-c", "while true; do sleep 1; done"]
"#
    )
}

/// (container id, restartCount, last exit code) of container `name` of pod `pod`.
fn container(c: &Cluster, pod: &str, name: &str) -> (String, u32, Option<i32>) {
    let out = c.kubectl_must(&[
        "get",
        "pod",
        pod,
        "-o",
        &format!(
            "jsonpath={{.status.containerStatuses[?(@.name==\"{name}\")].containerID}} \
             {{.status.containerStatuses[?(@.name==\"{name}\")].restartCount}} \
             {{.status.containerStatuses[?(@.name==\"{name}\")].lastState.terminated.exitCode}}"
        ),
    ]);
    let f: Vec<&str> = out.split_whitespace().collect();
    (
        f.first()
            .unwrap_or(&"")
            .trim_start_matches("youki://")
            .to_owned(),
        f.get(1).and_then(|n| n.parse().ok()).unwrap_or(0),
        f.get(2).and_then(|n| n.parse().ok()),
    )
}

fn init_pid(c: &Cluster, id: &str) -> Option<i32> {
    let state = c.hosts[1].containers_dir().join(id).join("state.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(state).ok()?).ok()?;
    v.get("pid")
        .or_else(|| v.get("init_process_pid"))?
        .as_i64()
        .map(|p| p as i32)
}

fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.split_whitespace().nth(2) == Some("Z"))
}

fn all_ready(c: &Cluster, pod: &str) -> bool {
    c.kubectl(&[
        "get",
        "pod",
        pod,
        "-o",
        "jsonpath={.status.containerStatuses[*].ready}",
    ])
    .is_some_and(|o| !o.is_empty() && o.split_whitespace().all(|r| r == "true"))
}

fn log_lines(path: &PathBuf) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// `kubectl attach -i pod -c container` with `input` on its stdin, then EOF: (exited on its
/// own, stdout + stderr). kubectl keeps attached to a container that goes on running after its
/// stdin closed, so after 10 s it is killed.
fn attach(c: &Cluster, pod: &str, container: &str, input: &str) -> (bool, String) {
    let out_path = c.dir.path().join(format!("attach-{pod}-{container}.out"));
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = c.hosts[0]
        .ns
        .command(cluster::KUBECTL)
        .env("KUBECONFIG", c.kubeconfig())
        .env("HOME", c.dir.path().join("home"))
        .args(["attach", "-i", pod, "-c", container])
        .stdin(std::process::Stdio::piped())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    // Give the input time to arrive before EOF.
    std::thread::sleep(Duration::from_secs(1));
    drop(stdin);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let ok = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.success();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (ok, std::fs::read_to_string(&out_path).unwrap_or_default())
}

#[test]
fn agent_restart_keeps_containers() {
    if !cluster::prerequisites() {
        return;
    }
    let mut c = Cluster::start(2, "k");
    let node = c.hosts[1].node.clone();
    c.apply(&pods(&c.image, &node));
    eventually(
        "pods keep, talker and orphan running and ready",
        Duration::from_secs(180),
        || c.logs(),
        || {
            (all_ready(&c, "keep") && all_ready(&c, "talker") && all_ready(&c, "orphan"))
                .then_some(())
        },
    );
    let ip = c.kubectl_must(&["get", "pod", "keep", "-o", "jsonpath={.status.podIP}"]);
    let uid = c.kubectl_must(&["get", "pod", "keep", "-o", "jsonpath={.metadata.uid}"]);
    let (web, web_restarts, _) = container(&c, "keep", "web");
    let (ticker, _, _) = container(&c, "keep", "ticker");
    let (quitter, _, _) = container(&c, "keep", "quitter");
    assert_eq!(web_restarts, 0);
    let web_pid = init_pid(&c, &web).unwrap();
    let ticker_pid = init_pid(&c, &ticker).unwrap();
    let quitter_pid = init_pid(&c, &quitter).unwrap();
    let ticker_log = c.hosts[1]
        .data_dir
        .join(format!("agent/pods/default_keep_{uid}/ticker/0.log"));

    // A TCP connection from host 1 to the pod, half a request sent before the kill.
    let target = format!("{ip}:8080");
    let mut conn = cluster::in_netns(&c.hosts[0].ns.0, move || {
        std::net::TcpStream::connect(target).unwrap()
    });
    conn.write_all(b"GET /index.html HTTP/1.0\r\n").unwrap();

    let ppid = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("PPid:").map(|v| v.trim().to_owned()))
            .unwrap_or_default()
    };
    // Each container's init is the child of its shim, not of the agent.
    let parent = std::fs::read(format!("/proc/{}/cmdline", ppid(web_pid))).unwrap_or_default();
    assert!(
        parent.split(|b| *b == 0).nth(1) == Some(b"shim".as_slice()),
        "web's parent: {}",
        String::from_utf8_lossy(&parent)
    );
    // kill -9: while no agent runs, the quitter exits 7 and the ticker keeps logging.
    let status = c.signal_agent(1, Signal::SIGKILL);
    assert!(status.is_some(), "the agent did not die on SIGKILL");
    assert!(
        alive(web_pid) && alive(ticker_pid),
        "containers died with the agent\n{}\n{}",
        cluster::must(&[
            "sh",
            "-c",
            &format!(
                "cat {}/agent/run/shims/*/shim.log; ps -eo pid,ppid,stat,comm | grep r3s",
                c.hosts[1].data_dir.display()
            )
        ]),
        c.logs()
    );
    let before = log_lines(&ticker_log);
    let quit = c.on_host(
        1,
        &[
            "nsenter",
            "-t",
            &quitter_pid.to_string(),
            "-m",
            "--",
            "/bin/sh",
            "-c",
            "touch /tmp/quit",
        ],
    );
    assert!(quit.status.success(), "{}", cluster::text(&quit));
    eventually(
        "the quitter to exit while no agent runs",
        Duration::from_secs(30),
        || c.logs(),
        || (!alive(quitter_pid)).then_some(()),
    );
    eventually(
        "the ticker's log to grow while no agent runs",
        Duration::from_secs(30),
        || format!("{} lines before", before),
        || (log_lines(&ticker_log) > before + 3).then_some(()),
    );

    c.start_agent(1);
    c.wait_node_ready(1);
    eventually(
        "the quitter's exit 7 reported and the container restarted once",
        Duration::from_secs(90),
        || c.logs(),
        || {
            let (id, restarts, last) = container(&c, "keep", "quitter");
            (restarts == 1 && last == Some(7) && id != quitter).then_some(())
        },
    );
    for (name, id, pid) in [("web", &web, web_pid), ("ticker", &ticker, ticker_pid)] {
        let (now, restarts, _) = container(&c, "keep", name);
        assert_eq!(&now, id, "{name}: a new container after kill -9");
        assert_eq!(restarts, 0, "{name}: restarted");
        assert_eq!(init_pid(&c, id), Some(pid), "{name}: another init");
        assert!(alive(pid));
    }
    assert_eq!(
        c.kubectl_must(&["get", "pod", "keep", "-o", "jsonpath={.status.podIP}"]),
        ip,
        "the pod's address changed"
    );
    conn.write_all(b"\r\n").unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.contains("kept"), "{answer}");
    eventually(
        "every container of keep ready again",
        Duration::from_secs(60),
        || c.logs(),
        || all_ready(&c, "keep").then_some(()),
    );
    let logs = c.kubectl_must(&["logs", "keep", "-c", "ticker", "--tail", "3"]);
    assert!(logs.contains("tick"), "{logs}");

    // attach -i, through shims the restarted agent adopted.
    attach(&c, "talker", "open", "one\n");
    attach(&c, "talker", "open", "two\n");
    eventually(
        "both attaches' input in the open container's log",
        Duration::from_secs(30),
        || c.logs(),
        || {
            let logs = c.kubectl_must(&["logs", "talker", "-c", "open"]);
            (logs.contains("got:one") && logs.contains("got:two")).then_some(())
        },
    );
    let (ok, out) = attach(&c, "talker", "once", "hello\n");
    assert!(ok, "attach -i to the stdinOnce container: {out}");
    eventually(
        "the stdinOnce container to read EOF after the first attach and exit 0",
        Duration::from_secs(30),
        || c.logs(),
        || {
            let code = c.kubectl_must(&[
                "get",
                "pod",
                "talker",
                "-o",
                "jsonpath={.status.containerStatuses[?(@.name==\"once\")].state.terminated.exitCode}",
            ]);
            (code.trim() == "0").then_some(())
        },
    );
    let logs = c.kubectl_must(&["logs", "talker", "-c", "once"]);
    assert!(logs.contains("got:hello") && logs.contains("eof"), "{logs}");
    let logs = c.kubectl_must(&["logs", "talker", "-c", "open"]);
    assert!(!logs.contains("eof"), "the open container saw EOF: {logs}");
    let (ok, out) = attach(&c, "keep", "web", "x\n");
    assert!(!ok && out.contains("not started with stdin: true"), "{out}");
    let (ok, out) = attach(&c, "talker", "once", "again\n");
    assert!(!ok, "a second attach to a stdinOnce container: {out}");

    // SIGTERM: the agent stops cleanly and leaves its pods; the orphan is deleted meanwhile.
    let (sleeper, _, _) = container(&c, "orphan", "sleeper");
    let sleeper_pid = init_pid(&c, &sleeper).unwrap();
    let orphan_uid = c.kubectl_must(&["get", "pod", "orphan", "-o", "jsonpath={.metadata.uid}"]);
    let status = c.signal_agent(1, Signal::SIGTERM);
    assert!(
        status.is_some_and(|s| s.success()),
        "the agent did not stop cleanly on SIGTERM: {status:?}"
    );
    assert!(alive(web_pid) && alive(sleeper_pid), "SIGTERM stopped pods");
    c.kubectl_must(&["delete", "pod", "orphan", "--wait=false"]);
    c.start_agent(1);
    c.wait_node_ready(1);
    let state_dir = c.hosts[1].data_dir.join("agent/run/pods");
    eventually(
        "the pod deleted while the agent was down to be stopped",
        Duration::from_secs(60),
        || c.logs(),
        || {
            (!alive(sleeper_pid) && !state_dir.join(format!("{orphan_uid}.json")).exists())
                .then_some(())
        },
    );
    let (now, restarts, _) = container(&c, "keep", "web");
    assert_eq!((now.as_str(), restarts), (web.as_str(), 0));
    assert_eq!(init_pid(&c, &web), Some(web_pid));

    // Deleting the re-adopted pods leaves nothing behind.
    c.kubectl_must(&["delete", "pod", "keep", "talker", "--wait=false"]);
    let run = c.hosts[1].data_dir.join("agent/run");
    let empty = |p: PathBuf| std::fs::read_dir(p).map_or(true, |mut d| d.next().is_none());
    eventually(
        "the pods' containers, shims, state, sandboxes and keep's cgroup gone",
        Duration::from_secs(60),
        || c.logs(),
        || {
            (!alive(web_pid)
                && empty(run.join("containers"))
                && empty(run.join("shims"))
                && empty(run.join("pods"))
                && empty(run.join("sandboxes"))
                && !PathBuf::from(format!("/sys/fs/cgroup/memory/r3s/pod{uid}")).exists())
            .then_some(())
        },
    );
}
