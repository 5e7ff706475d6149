//! End-to-end tests of the `r3s-agent` command line: the real binary, real files in temp dirs, an
//! explicit environment (the child's environment is cleared first), exact checks on exit status
//! and on the one-line error.

// Helpers outside #[test] functions unwrap too: a failed temp-file write should fail the test.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_r3s-agent");

/// The binary with a cleared environment plus `env`, a temp data dir and a node name (the
/// machine's host name need not be a valid node name).
fn agent(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    // Never the machine's own /etc/r3s/config.yaml: an empty file stands in for it, unless the
    // test names a config itself (a --config flag or its own R3S_CONFIG_FILE wins over this).
    let empty = dir.join("r3st-empty-config.yaml");
    std::fs::write(&empty, "").unwrap();
    cmd.env_clear()
        .env("R3S_CONFIG_FILE", &empty)
        .envs(env.iter().copied());
    cmd.arg("--data-dir").arg(dir.join("data"));
    cmd.args(args);
    cmd
}

/// Runs to completion; asserts exit status 1 and returns stderr's lines.
fn fails_with_lines(mut cmd: Command) -> Vec<String> {
    let out = cmd.stdin(Stdio::null()).output().expect("run r3s-agent");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    stderr.lines().map(str::to_owned).collect()
}

/// Runs to completion; asserts exit status 1 and exactly one line on stderr, which it returns.
fn fails(cmd: Command) -> String {
    let lines = fails_with_lines(cmd);
    assert_eq!(lines.len(), 1, "expected one line, got: {lines:#?}");
    lines[0].clone()
}

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap();
    path.to_owned()
}

const JOIN: [(&str, &str); 3] = [
    ("R3S_URL", "https://127.0.0.1:6443"),
    ("R3S_TOKEN", "r3st-secret"),
    ("R3S_NODE_NAME", "r3st-agent"),
];

#[test]
fn help_lists_every_flag() {
    let out = Command::new(BIN)
        .arg("--help")
        .env_clear()
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--server",
        "--token",
        "--token-file",
        "--data-dir",
        "--node-name",
        "--node-ip",
        "--node-external-ip",
        "--node-label",
        "--node-taint",
        "--kubelet-arg",
        "--private-registry",
        "--config",
        "--debug",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
    for env in [
        "R3S_URL",
        "R3S_TOKEN",
        "R3S_TOKEN_FILE",
        "R3S_CONFIG_FILE",
        "R3S_NODE_NAME",
        "R3S_PRIVATE_REGISTRY",
    ] {
        assert!(help.contains(env), "{env} missing from --help");
    }
    assert!(help.contains("[default: /etc/r3s/registries.yaml]"));
}

#[test]
fn server_and_token_are_required() {
    let dir = tempfile::tempdir().unwrap();
    let line = fails(agent(
        dir.path(),
        &["--token", "x", "--node-name", "n"],
        &[],
    ));
    assert_eq!(
        line,
        "r3s-agent: --server (R3S_URL) is required: the https:// URL of the r3s server to join"
    );
    let line = fails(agent(
        dir.path(),
        &["-s", "https://127.0.0.1:6443", "--node-name", "n"],
        &[],
    ));
    assert_eq!(
        line,
        "r3s-agent: a join token is required: give --token (R3S_TOKEN) or --token-file (R3S_TOKEN_FILE)"
    );
    let missing = dir.path().join("no-token");
    let line = fails(agent(
        dir.path(),
        &["-s", "https://127.0.0.1:6443", "--node-name", "n"],
        &[("R3S_TOKEN_FILE", missing.to_str().unwrap())],
    ));
    assert_eq!(
        line,
        format!(
            "r3s-agent: --token-file (from env R3S_TOKEN_FILE): cannot read {}: No such file or directory (os error 2)",
            missing.display()
        )
    );
}

#[test]
fn unknown_key_in_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(&dir.path().join("config.yaml"), "node-lable: [a=b]\n");
    let line = fails(agent(dir.path(), &["-c", config.to_str().unwrap()], &JOIN));
    assert_eq!(
        line,
        format!(
            "r3s-agent: {}: unknown key \"node-lable\" (did you mean \"node-label\"?)",
            config.display()
        )
    );
    // A server-only flag is unknown to the agent.
    std::fs::write(&config, "cluster-cidr: 10.42.0.0/16\n").unwrap();
    let line = fails(agent(dir.path(), &["-c", config.to_str().unwrap()], &JOIN));
    assert_eq!(
        line,
        format!(
            "r3s-agent: {}: unknown key \"cluster-cidr\"",
            config.display()
        )
    );
}

#[test]
fn bad_value_in_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        &dir.path().join("config.yaml"),
        "node-external-ip: 203.0.113.300\n",
    );
    let line = fails(agent(dir.path(), &["-c", config.to_str().unwrap()], &JOIN));
    assert_eq!(
        line,
        format!(
            "r3s-agent: {}: key \"node-external-ip\": invalid value \"203.0.113.300\": not an IP address",
            config.display()
        )
    );
}

#[test]
fn bad_flag_value() {
    let dir = tempfile::tempdir().unwrap();
    let line = fails(agent(
        dir.path(),
        &["--server", "http://127.0.0.1:6443"],
        &[],
    ));
    assert_eq!(
        line,
        "r3s-agent: invalid value 'http://127.0.0.1:6443' for '--server <URL>': the server URL must start with https://"
    );
    // k3s users pass kubelet flags through; an unsupported one is refused by name.
    let line = fails(agent(
        dir.path(),
        &["--kubelet-arg", "eviction-hard=memory.available<100Mi"],
        &[],
    ));
    assert_eq!(
        line,
        "r3s-agent: invalid value 'eviction-hard=memory.available<100Mi' for '--kubelet-arg <ARG>': kubelet argument \"eviction-hard\" is not supported by r3s (supported: sync-frequency, max-pods)"
    );
    let line = fails(agent(dir.path(), &["--node-label", "bad label=x"], &[]));
    assert!(
        line.starts_with(
            "r3s-agent: invalid value 'bad label=x' for '--node-label <LABEL>': key \"bad label\""
        ),
        "{line}"
    );
}

#[test]
fn bad_env_value() {
    let dir = tempfile::tempdir().unwrap();
    let line = fails(agent(dir.path(), &[], &[("R3S_URL", "127.0.0.1:6443")]));
    assert_eq!(
        line,
        "r3s-agent: environment variable R3S_URL: invalid value \"127.0.0.1:6443\": the server URL must start with https://"
    );
    let line = fails(agent(dir.path(), &[], &[("R3S_NODE_NAME", "Bad_Name")]));
    assert!(
        line.starts_with(
            "r3s-agent: environment variable R3S_NODE_NAME: invalid value \"Bad_Name\": "
        ),
        "{line}"
    );
}

#[test]
fn unreadable_or_directory_config() {
    let dir = tempfile::tempdir().unwrap();
    let looped = dir.path().join("loop.yaml");
    std::os::unix::fs::symlink(dir.path().join("loop2.yaml"), &looped).unwrap();
    std::os::unix::fs::symlink(&looped, dir.path().join("loop2.yaml")).unwrap();
    let line = fails(agent(dir.path(), &["-c", looped.to_str().unwrap()], &JOIN));
    assert!(
        line.starts_with(&format!(
            "r3s-agent: {}: cannot read config file: ",
            looped.display()
        )),
        "{line}"
    );

    let locked = write(&dir.path().join("locked.yaml"), "debug: true\n");
    std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    if std::fs::read(&locked).is_err() {
        let line = fails(agent(dir.path(), &["-c", locked.to_str().unwrap()], &JOIN));
        assert_eq!(
            line,
            format!(
                "r3s-agent: {}: cannot read config file: Permission denied (os error 13)",
                locked.display()
            )
        );
    }

    let line = fails(agent(
        dir.path(),
        &["--config", dir.path().to_str().unwrap()],
        &JOIN,
    ));
    assert_eq!(
        line,
        format!(
            "r3s-agent: {}: is a directory, not a config file",
            dir.path().display()
        )
    );
}

/// A token whose CA hash is malformed: refused before any connection, so the agent ends at once.
const BAD_HASH: &str = "K10abc::server:r3st-secret";
const BAD_HASH_LINE: &str = "r3s-agent: the join token: the token's CA hash must be 64 hex digits (a sha256), got 3 characters";

#[test]
fn an_unreachable_server_is_retried_until_sigterm() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on: connections are refused, which is transient for a joining agent.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("https://127.0.0.1:{port}");
    let mut child = agent(
        dir.path(),
        &[],
        &[
            ("R3S_URL", url.as_str()),
            ("R3S_TOKEN", "r3st-secret"),
            ("R3S_NODE_NAME", "r3st-agent"),
        ],
    )
    .stdin(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let retry = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("retrying in 5s"))
        .expect("a retry warning");
    assert!(retry.contains(&format!("127.0.0.1:{port}")), "{retry}");
    // Still running: a server that is down (a Pi fleet booting) is waited for, not a failure.
    assert!(child.try_wait().unwrap().is_none());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM while joining is a clean stop"
    );
}

#[test]
fn a_malformed_token_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = JOIN.to_vec();
    env[1] = ("R3S_TOKEN", BAD_HASH);
    assert_eq!(fails(agent(dir.path(), &[], &env)), BAD_HASH_LINE);
}

#[test]
fn rust_log_overrides_debug() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = JOIN.to_vec();
    env[1] = ("R3S_TOKEN", BAD_HASH);
    env.push(("RUST_LOG", "warn"));
    // --debug would log every setting; RUST_LOG=warn silences that, leaving the one error line.
    let line = fails(agent(dir.path(), &["--debug"], &env));
    assert_eq!(line, BAD_HASH_LINE);
    env.pop();
    env.push(("RUST_LOG", "r3s_agent=loud"));
    let line = fails(agent(dir.path(), &[], &env));
    assert!(
        line.starts_with(
            "r3s-agent: environment variable RUST_LOG: invalid filter \"r3s_agent=loud\""
        ),
        "{line}"
    );
}

#[test]
fn precedence_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        &dir.path().join("config.yaml"),
        "server: https://127.0.0.2:6443\ntoken: K10abc::server:from-file\nnode-name: file-node\nnode-label: [from=file]\ndebug: true\nkubelet-arg: [sync-frequency=10s, max-pods=250]\n",
    );
    std::fs::create_dir(dir.path().join("config.yaml.d")).unwrap();
    let dropin = write(
        &dir.path().join("config.yaml.d/10-taints.yaml"),
        "node-taint+: [edge=true:NoSchedule]\n",
    );
    let lines = fails_with_lines(agent(
        dir.path(),
        &[
            "--config",
            config.to_str().unwrap(),
            "--node-name",
            "flag-node",
        ],
        &[
            ("R3S_NODE_LABEL", "from=env"),
            ("R3S_URL", "https://127.0.0.3:6443"),
        ],
    ));
    let log = lines.join("\n");
    for want in [
        "setting server=https://127.0.0.3:6443 (from env R3S_URL)".to_owned(),
        format!("setting token=(set) (from file {})", config.display()),
        "setting node-name=flag-node (from flag)".to_owned(),
        "setting node-label=from=env (from env R3S_NODE_LABEL)".to_owned(),
        format!(
            "setting node-taint=edge=true:NoSchedule (from file {})",
            dropin.display()
        ),
        format!("setting debug=true (from file {})", config.display()),
        format!(
            "setting kubelet-arg=sync-frequency=10s,max-pods=250 (from file {})",
            config.display()
        ),
        "setting private-registry=/etc/r3s/registries.yaml (from default)".to_owned(),
    ] {
        assert!(log.contains(&want), "missing {want:?} in:\n{log}");
    }
    assert!(
        !log.contains("from-file"),
        "the token must never be logged:\n{log}"
    );
    assert_eq!(lines.last().map(String::as_str), Some(BAD_HASH_LINE));
}

#[test]
fn check_config_reports_the_host() {
    let out = Command::new(BIN).arg("check-config").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Whatever this host lacks, each finding is one line and the status says whether any exist.
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(!lines.is_empty());
    if out.status.success() {
        assert_eq!(lines.len(), 1, "{stdout}");
        assert!(lines[0].contains("can run pods"), "{stdout}");
    } else {
        assert_eq!(out.status.code(), Some(1));
        assert!(
            lines.iter().all(|l| !l.contains("can run pods")),
            "{stdout}"
        );
    }
}

/// `shim-exec` is a helper the agent starts with a control pipe on descriptor 3; run by hand
/// without one it says so in one line instead of touching any container.
#[test]
fn shim_exec_without_its_control_pipe() {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_r3s-agent"));
    cmd.args(["shim-exec", "/nonexistent", "c1", "true"])
        .stdin(Stdio::null());
    // SAFETY: close is async-signal-safe; whatever descriptor 3 the test runner left is not ours.
    unsafe {
        cmd.pre_exec(|| {
            libc::close(3);
            Ok(())
        })
    };
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim_end(),
        "r3s shim-exec: descriptor 3 is not open; this helper is started by the agent"
    );
}
