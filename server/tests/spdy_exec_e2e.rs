//! `kubectl exec` and `attach` over SPDY/3.1 (`KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false`, what
//! older kubectl and client-go tools speak) and terminal behaviour over both transports, end to
//! end as root: the real `r3s-server` with its in-process agent, a real `docker-registry` with a
//! busybox-static image, real youki containers and the real kubectl 1.32.
//!
//! Terminal cases run kubectl on a pseudo-terminal this test opens (kubectl needs a terminal on
//! its stdin for `-t`): `^C` typed there must interrupt `sleep 1000` in the container while the
//! shell survives, the container's terminal must have kubectl's window size, and follow a resize.
//!
//! Everything runs inside a network namespace this test creates (unique name, deleted by a
//! guard), so the server's bridge, nftables tables and kubelet port never meet other tests'.

#![allow(clippy::unwrap_used)]

#[path = "../../images/tests/support/mod.rs"]
mod support;

#[path = "support/binary.rs"]
mod binary;

#[path = "support/terminal.rs"]
mod terminal;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use binary::{KUBECTL, Server, free_port};
use oci_client::secrets::RegistryAuth;
use support::{Registry, require};
use terminal::{Env, Kid, Netns, Term};

/// Reads lines from a child's stdout on a thread; sends the first that satisfies `want`.
fn read_until(
    out: impl Read + Send + 'static,
    want: impl Fn(&str) -> bool + Send + 'static,
) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
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

const POD: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: box
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: IMAGE
    command: ["sh", "-c", "i=0; while true; do i=$((i+1)); echo tick-$i; sleep 1; done"]
  - name: reader
    image: IMAGE
    stdin: true
    command: ["sh", "-c", "while read l; do echo got-$l; done"]
"#;

/// An interactive shell through `kubectl exec -it` on a terminal: window size, resize, `^C`
/// against a foreground `sleep`, and the shell's exit code.
fn interactive_shell(env: &Env, spdy: bool) {
    let how = if spdy { "SPDY" } else { "WebSocket" };
    let log = || env.log_tail();
    let mut term = Term::spawn(
        env.cmd(spdy, &["exec", "-it", "box", "-c", "main", "--", "sh"]),
        100,
        33,
    );
    let limit = Duration::from_secs(60);
    // `$((..))` makes the marker appear only in the output, never in the echoed input.
    term.type_in(b"echo ready-$((40+2))\n");
    term.expect("ready-42", limit, &log);
    term.type_in(b"stty size; echo sized-$((1+1))\n");
    term.expect("sized-2", limit, &log);
    assert!(
        term.text().contains("33 100"),
        "{how}: the container's terminal does not have kubectl's size: {}",
        term.text()
    );
    // A resize of kubectl's terminal reaches the container's (kubectl sends it on SIGWINCH;
    // it travels apart from stdin, so ask again until it has arrived).
    term.resize(120, 40);
    let deadline = Instant::now() + limit;
    let mut n = 0;
    while !term.text().contains("40 120") {
        assert!(
            Instant::now() < deadline,
            "{how}: resize never arrived: {}",
            term.text()
        );
        n += 1;
        term.type_in(format!("stty size; echo asked-{n}-$((0))\n").as_bytes());
        term.expect(&format!("asked-{n}-0"), limit, &log);
    }
    // ^C interrupts the foreground program, not the shell.
    term.type_in(b"echo sleeping-$((1+1)); sleep 1000\n");
    term.expect("sleeping-2", limit, &log);
    // Give the shell a moment to start sleep; a ^C that comes earlier would hit the shell
    // itself, which also survives it and then runs sleep: the survival check below would fail.
    std::thread::sleep(Duration::from_secs(1));
    term.type_in(b"\x03");
    term.type_in(b"echo survived-$((2+3))\n");
    term.expect("survived-5", limit, &log);
    term.type_in(b"exit 4\n");
    let code = term.exit_code(limit);
    assert_eq!(
        code,
        Some(4),
        "{how}: kubectl's exit code; terminal:\n{}",
        term.text()
    );
}

#[test]
fn kubectl_exec_and_attach_over_spdy_and_terminals() {
    if !require("root", support::is_root())
        || !require("docker-registry", support::have_registry())
        || !require("busybox-static", support::have_busybox())
        || !require("kubectl", Path::new(KUBECTL).exists())
    {
        return;
    }
    let netns = Netns::create("x");
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
    let img = support::busybox_image(
        &["sh", "echo", "sleep", "cat", "stty", "test", "true", "tty"],
        &[],
    );
    rt.block_on(reg.push("busybox", "1", &img, &RegistryAuth::Anonymous));
    let image = format!("{}/busybox:1", reg.addr);
    let registries = binary::plain_http_mirror(dir, &reg.addr);
    let node = format!("r3st-spdy-{}", std::process::id());
    let mut cmd = binary::command(dir, free_port(), &node);
    cmd.env(
        "RUST_LOG",
        "info,r3s_agent::kubelet=debug,r3s_server::api::kubelet_proxy=debug",
    )
    .args(["--node-ip", "127.0.0.1", "--private-registry"])
    .arg(&registries);
    let server = Server::spawn(cmd, &dir.join("server.log"), Duration::from_secs(120));
    binary::eventually(dir, "the node Ready", Duration::from_secs(120), || {
        let (code, out, _) = env.run(
            false,
            &[
                "get",
                "node",
                &node,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ],
            None,
        );
        (code == 0 && out == "True").then_some(())
    });
    let manifest = dir.join("pod.yaml");
    std::fs::write(&manifest, POD.replace("IMAGE", &image)).unwrap();
    env.ok(&["apply", "-f", manifest.to_str().unwrap()]);
    env.ok(&["wait", "--for=condition=Ready", "pod/box", "--timeout=180s"]);

    // --- exec over SPDY ---------------------------------------------------------------
    let (code, out, err) = env.run(
        true,
        &[
            "exec",
            "-v=6",
            "box",
            "-c",
            "main",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
        None,
    );
    assert_eq!(code, 3, "{out}{err}\n{}", env.log_tail());
    assert_eq!(out, "out\n");
    assert!(err.contains("err\n"), "{err}");
    assert!(err.contains("command terminated with exit code 3"), "{err}");
    // kubectl really took the SPDY path (its -v=6 log names the POST upgrade).
    assert!(err.contains("POST"), "{err}");
    let (code, out, err) = env.run(
        true,
        &["exec", "box", "-c", "main", "--", "echo", "ok"],
        None,
    );
    assert_eq!((code, out.as_str()), (0, "ok\n"), "{err}");
    let (code, out, err) = env.run(
        true,
        &["exec", "-i", "box", "-c", "main", "--", "cat"],
        Some("piped-line-1\npiped-line-2\n"),
    );
    assert_eq!(code, 0, "{err}\n{}", env.log_tail());
    assert_eq!(out, "piped-line-1\npiped-line-2\n");
    // A larger stdin than one frame, counted on the other side.
    let big = "0123456789abcdef".repeat(16 * 1024);
    let (code, out, err) = env.run(
        true,
        &[
            "exec",
            "-i",
            "box",
            "-c",
            "main",
            "--",
            "sh",
            "-c",
            "cat | wc -c",
        ],
        Some(&big),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), big.len().to_string());

    // --- terminals over both transports ----------------------------------------------
    interactive_shell(&env, true);
    interactive_shell(&env, false);

    // --- attach over SPDY --------------------------------------------------------------
    let mut attach = Kid(env
        .cmd(true, &["attach", "box", "-c", "main"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap());
    let seen = read_until(attach.0.stdout.take().unwrap(), |l| l.starts_with("tick-"));
    seen.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("attach over SPDY showed no output; {}", env.log_tail()));
    drop(attach);
    let mut attach = Kid(env
        .cmd(true, &["attach", "-i", "box", "-c", "reader"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap());
    let seen = read_until(attach.0.stdout.take().unwrap(), |l| l == "got-spdy-in");
    let mut input = attach.0.stdin.take().unwrap();
    input.write_all(b"spdy-in\n").unwrap();
    input.flush().unwrap();
    seen.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| {
            panic!(
                "attach -i over SPDY did not reach the container; {}",
                env.log_tail()
            )
        });
    drop(input);
    drop(attach);

    // --- attach -it to a container without a terminal ---------------------------------
    // As upstream: kubectl sees `tty` unset in the spec, warns, and attaches without one.
    for spdy in [false, true] {
        let mut term = Term::spawn(
            env.cmd(spdy, &["attach", "-i", "-t", "box", "-c", "reader"]),
            80,
            24,
        );
        let log = || env.log_tail();
        term.expect(
            "Unable to use a TTY - container reader did not allocate one",
            Duration::from_secs(60),
            &log,
        );
        let word = if spdy { "tty-spdy" } else { "tty-ws" };
        // Lines typed before the attach is up would go nowhere: type until one comes back.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !term.text().contains(&format!("got-{word}")) {
            assert!(
                Instant::now() < deadline,
                "attach -it (spdy: {spdy}) never echoed: {}\n{}",
                term.text(),
                env.log_tail()
            );
            term.type_in(format!("{word}\n").as_bytes());
            std::thread::sleep(Duration::from_secs(1));
        }
        drop(term);
    }

    env.ok(&["delete", "pod", "box", "--wait=true", "--timeout=120s"]);
    let status = server.stop(Duration::from_secs(90));
    assert!(status.success(), "exit status {status}");
    drop(reg);
    drop(rt);
    drop(netns);
}
