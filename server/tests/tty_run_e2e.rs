//! Containers with `tty: true` and `stdin: true`, end to end as root, the way a k3s user debugs:
//! `kubectl run -it --rm … -- sh`, `kubectl attach -it` to a running terminal container,
//! `kubectl run -i --rm … -- cat` with piped input, and `kubectl logs` of a terminal container,
//! over the WebSocket transport (kubectl's default) and SPDY
//! (`KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false`). The real `r3s-server` with its in-process agent,
//! a real `docker-registry` with a busybox-static image, real youki containers on a terminal
//! their shim holds, and the real kubectl 1.32 on a pseudo-terminal this test opens.
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

use std::path::Path;
use std::time::{Duration, Instant};

use binary::{KUBECTL, Server, free_port};
use oci_client::secrets::RegistryAuth;
use support::{Registry, require};
use terminal::{Env, Netns, Term};

const TTY_POD: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: ttybox
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: IMAGE
    stdin: true
    tty: true
    command: ["sh"]
"#;

/// Types `line` (which must print `marker`, computed so it never appears in the echo) until the
/// terminal shows `marker`: input typed before the attach is up may be lost.
fn until_shown(term: &mut Term, line: &str, marker: &str, what: &str, log: &dyn Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !term.text().contains(marker) {
        assert!(
            Instant::now() < deadline,
            "{what}: the terminal never showed {marker:?}:\n{}\n{}",
            term.text(),
            log()
        );
        term.type_in(line.as_bytes());
        let wait = Instant::now() + Duration::from_secs(3);
        while Instant::now() < wait && !term.text().contains(marker) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `kubectl run -it --rm … -- sh` on a terminal: prompt, echo, window size, `^C`, `exit 0`, and
/// the pod deleted.
fn run_it_rm(env: &Env, image: &str, spdy: bool) {
    let how = if spdy { "SPDY" } else { "WebSocket" };
    let name = if spdy { "t-spdy" } else { "t-ws" };
    let log = || env.log_tail();
    let limit = Duration::from_secs(90);
    let image_arg = format!("--image={image}");
    let mut term = Term::spawn(
        env.cmd(
            spdy,
            &[
                "run",
                name,
                &image_arg,
                "--restart=Never",
                "-it",
                "--rm",
                "--",
                "sh",
            ],
        ),
        100,
        33,
    );
    // kubectl's hint, then the shell's prompt (busybox root: `/ # `), which has no newline.
    term.expect("try pressing enter", limit, &log);
    until_shown(&mut term, "\n", "# ", how, &log);
    // The answer on a line of its own (the echoed input line is `echo hi`).
    term.type_in(b"echo hi\n");
    term.expect("\nhi\r", limit, &log);
    // kubectl sends its window size apart from stdin: ask until it has arrived.
    let mut n = 0;
    let deadline = Instant::now() + limit;
    while !term.text().contains("33 100") {
        assert!(
            Instant::now() < deadline,
            "{how}: the container's terminal never got kubectl's size: {}\n{}",
            term.text(),
            log()
        );
        n += 1;
        term.type_in(format!("stty size; echo sized-{n}-$((0))\n").as_bytes());
        term.expect(&format!("sized-{n}-0"), limit, &log);
    }
    // ^C interrupts the foreground sleep; the shell survives it.
    term.type_in(b"echo sleeping-$((1+1)); sleep 1000\n");
    term.expect("sleeping-2", limit, &log);
    std::thread::sleep(Duration::from_secs(1));
    term.type_in(b"\x03");
    term.type_in(b"echo survived-$((2+3))\n");
    term.expect("survived-5", limit, &log);
    term.type_in(b"exit 0\n");
    let code = term.exit_code(Duration::from_secs(120));
    assert_eq!(
        code,
        Some(0),
        "{how}: kubectl run's exit code; terminal:\n{}\n{}",
        term.text(),
        log()
    );
    eprintln!("{how}: kubectl run -it --rm:\n{}", term.text());
    assert!(
        term.text().contains(&format!("pod \"{name}\" deleted")),
        "{how}: --rm did not delete the pod: {}",
        term.text()
    );
    let (code, _, err) = env.run(false, &["get", "pod", name], None);
    assert_ne!(code, 0, "{how}: pod {name} still exists");
    assert!(
        err.contains("NotFound") || err.contains("not found"),
        "{err}"
    );
}

#[test]
fn kubectl_run_it_rm_attach_and_logs_on_a_terminal() {
    if !require("root", support::is_root())
        || !require("docker-registry", support::have_registry())
        || !require("busybox-static", support::have_busybox())
        || !require("kubectl", Path::new(KUBECTL).exists())
    {
        return;
    }
    let netns = Netns::create("t");
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
    let img = support::busybox_image(&["sh", "echo", "sleep", "cat", "stty", "true"], &[]);
    rt.block_on(reg.push("busybox", "1", &img, &RegistryAuth::Anonymous));
    let image = format!("{}/busybox:1", reg.addr);
    let registries = binary::plain_http_mirror(dir, &reg.addr);
    let node = format!("r3st-tty-{}", std::process::id());
    let port = free_port();
    let server_cmd = || {
        let mut cmd = binary::command(dir, port, &node);
        cmd.env("RUST_LOG", "info,r3s_agent::kubelet=debug")
            .args(["--node-ip", "127.0.0.1", "--private-registry"])
            .arg(&registries);
        cmd
    };
    let node_ready = || {
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
        })
    };
    // No grace: dropping it SIGKILLs it, a crash, after which the next agent adopts the pods.
    let server = Server::spawn(server_cmd(), &dir.join("server.log"), Duration::ZERO);
    node_ready();
    let log = || env.log_tail();

    // --- kubectl run -it --rm -- sh, both transports -----------------------------------
    run_it_rm(&env, &image, false);
    run_it_rm(&env, &image, true);

    // --- kubectl run -i --rm -- cat with piped stdin (no terminal) --------------------
    for spdy in [false, true] {
        let name = if spdy { "p-spdy" } else { "p-ws" };
        let image_arg = format!("--image={image}");
        let (code, out, err) = env.run(
            spdy,
            &[
                "run",
                name,
                &image_arg,
                "--restart=Never",
                "-i",
                "--rm",
                "--",
                "cat",
            ],
            Some("piped-1\npiped-2\n"),
        );
        assert_eq!(code, 0, "run -i (spdy: {spdy}): {out}{err}\n{}", log());
        assert!(
            out.contains("piped-1\npiped-2\n"),
            "run -i (spdy: {spdy}): {out}{err}"
        );
        assert!(
            out.contains(&format!("pod \"{name}\" deleted")),
            "{out}{err}"
        );
    }

    // --- kubectl attach -it to a running terminal container, twice each ------------------
    let manifest = dir.join("ttybox.yaml");
    std::fs::write(&manifest, TTY_POD.replace("IMAGE", &image)).unwrap();
    env.ok(&["apply", "-f", manifest.to_str().unwrap()]);
    env.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/ttybox",
        "--timeout=180s",
    ]);
    for (i, spdy) in [false, true, false].into_iter().enumerate() {
        let how = format!("attach -it #{i} (spdy: {spdy})");
        let mut term = Term::spawn(env.cmd(spdy, &["attach", "-it", "ttybox"]), 90, 20);
        until_shown(
            &mut term,
            &format!("echo attached-{i}-$((6*7))\n"),
            &format!("attached-{i}-42"),
            &how,
            &log,
        );
        assert!(
            !term.text().contains("Unable to use a TTY"),
            "{how}: {}",
            term.text()
        );
        let mut n = 0;
        let deadline = Instant::now() + Duration::from_secs(90);
        while !term.text().contains("20 90") {
            assert!(
                Instant::now() < deadline,
                "{how}: size never arrived: {}",
                term.text()
            );
            n += 1;
            term.type_in(format!("stty size; echo size-{i}-{n}-$((0))\n").as_bytes());
            term.expect(&format!("size-{i}-{n}-0"), Duration::from_secs(90), &log);
        }
        if i == 0 {
            // A resize of kubectl's terminal reaches the container's.
            term.resize(110, 25);
            let deadline = Instant::now() + Duration::from_secs(90);
            while !term.text().contains("25 110") {
                assert!(
                    Instant::now() < deadline,
                    "{how}: resize never arrived: {}",
                    term.text()
                );
                n += 1;
                term.type_in(format!("stty size; echo size-{i}-{n}-$((0))\n").as_bytes());
                term.expect(&format!("size-{i}-{n}-0"), Duration::from_secs(90), &log);
            }
        }
        if i == 0 {
            // State of this shell, to recognise it after the agent's restart.
            term.type_in(b"export MARK=kept-$((3+4)); echo set-$((2+3))\n");
            term.expect("set-5", Duration::from_secs(90), &log);
        }
        // Detach by ending kubectl: the shell keeps running for the next attacher.
        drop(term);
    }
    // kubectl logs shows what the terminal printed (one stream, lines ending in CR LF).
    let logs = env.ok(&["logs", "ttybox"]);
    assert!(logs.contains("attached-0-42"), "{logs}");
    assert!(logs.contains("attached-2-42"), "{logs}");
    let phase = env.ok(&["get", "pod", "ttybox", "-o", "jsonpath={.status.phase}"]);
    assert_eq!(phase, "Running");

    // --- the terminal survives a crash of the server and its agent -----------------------
    drop(server);
    let server = Server::spawn(
        server_cmd(),
        &dir.join("server.log"),
        Duration::from_secs(120),
    );
    node_ready();
    // Until the new agent has adopted the pod, attach may be refused: retry whole sessions.
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut term = Term::spawn(env.cmd(false, &["attach", "-it", "ttybox"]), 70, 15);
        let marker = format!("mark-kept-7-{attempt}");
        let shown = Instant::now() + Duration::from_secs(20);
        while Instant::now() < shown && !term.text().contains(&marker) {
            term.type_in(format!("echo mark-$MARK-$(({attempt}))\n").as_bytes());
            std::thread::sleep(Duration::from_secs(2));
        }
        if term.text().contains(&marker) {
            let mut n = 0;
            while !term.text().contains("15 70") {
                assert!(
                    Instant::now() < deadline,
                    "after the restart, size never arrived: {}",
                    term.text()
                );
                n += 1;
                term.type_in(format!("stty size; echo again-{n}-$((0))\n").as_bytes());
                term.expect(&format!("again-{n}-0"), Duration::from_secs(90), &log);
            }
            eprintln!(
                "after the restart, attach #{attempt} reached the same shell:\n{}",
                term.text()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the restart, attach never reached the same shell: {}\n{}",
            term.text(),
            log()
        );
    }
    let restarts = env.ok(&[
        "get",
        "pod",
        "ttybox",
        "-o",
        "jsonpath={.status.containerStatuses[0].restartCount}",
    ]);
    assert_eq!(restarts, "0");

    env.ok(&["delete", "pod", "ttybox", "--wait=true", "--timeout=120s"]);
    let status = server.stop(Duration::from_secs(90));
    assert!(status.success(), "exit status {status}");
    drop(reg);
    drop(rt);
    drop(netns);
}
