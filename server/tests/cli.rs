//! End-to-end tests of the `r3s-server` command line: the real binary, real files in temp dirs,
//! an explicit environment (the child's environment is cleared first, so nothing leaks in from the
//! machine running the tests), and exact checks on exit status and the one-line error.

// Helpers outside #[test] functions unwrap too: a failed temp-file write should fail the test.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_r3s-server");

/// The binary with a cleared environment plus `env`, and a temp data dir so nothing is written
/// outside the test's own directory.
fn server(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    // Never the machine's own /etc/r3s/config.yaml: an empty file stands in for it, unless the
    // test names a config itself (a --config flag or its own R3S_CONFIG_FILE wins over this).
    let empty = dir.join("r3st-empty-config.yaml");
    std::fs::write(&empty, "").unwrap();
    cmd.env_clear()
        .env("R3S_CONFIG_FILE", &empty)
        .envs(env.iter().copied());
    cmd.arg("--data-dir").arg(dir.join("data"));
    cmd.arg("--write-kubeconfig")
        .arg(dir.join("kubeconfig.yaml"));
    cmd.arg("--node-name").arg("r3st-node");
    cmd.args(args);
    cmd
}

/// Runs to completion and returns (status code, stderr), asserting the failure is exactly one line.
fn fails(mut cmd: Command) -> String {
    let out: Output = cmd.stdin(Stdio::null()).output().expect("run r3s-server");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(
        stderr.lines().count(),
        1,
        "expected one line, got: {stderr}"
    );
    stderr.trim_end().to_owned()
}

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap();
    path.to_owned()
}

#[test]
fn help_lists_every_flag() {
    let out = Command::new(BIN)
        .arg("--help")
        .env_clear()
        .env("R3S_TOKEN", "r3st-hidden-secret")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--data-dir",
        "--bind-address",
        "--https-listen-port",
        "--advertise-address",
        "--tls-san",
        "--token",
        "--token-file",
        "--write-kubeconfig",
        "--write-kubeconfig-mode",
        "--cluster-cidr",
        "--service-cidr",
        "--cluster-dns",
        "--cluster-domain",
        "--service-node-port-range",
        "--datastore-endpoint",
        "--disable-agent",
        "--node-name",
        "--node-ip",
        "--node-label",
        "--node-taint",
        "--kubelet-arg",
        "--config",
        "--debug",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
    for env in [
        "R3S_TOKEN",
        "R3S_KUBECONFIG_OUTPUT",
        "R3S_KUBECONFIG_MODE",
        "R3S_CONFIG_FILE",
        "R3S_DATA_DIR",
    ] {
        assert!(help.contains(env), "{env} missing from --help");
    }
    assert!(help.contains("[default: /var/lib/r3s]") && help.contains("[default: 10.42.0.0/16]"));
    assert!(
        !help.contains("r3st-hidden-secret"),
        "--help must not show environment values"
    );
}

#[test]
fn unknown_key_in_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        &dir.path().join("config.yaml"),
        "cluster-cidrs: 10.42.0.0/16\n",
    );
    let line = fails(server(
        dir.path(),
        &["--config", config.to_str().unwrap()],
        &[],
    ));
    assert_eq!(
        line,
        format!(
            "r3s-server: {}: unknown key \"cluster-cidrs\" (did you mean \"cluster-cidr\"?)",
            config.display()
        )
    );
}

#[test]
fn bad_value_in_drop_in_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(&dir.path().join("config.yaml"), "node-label: [a=b]\n");
    std::fs::create_dir(dir.path().join("config.yaml.d")).unwrap();
    let dropin = write(
        &dir.path().join("config.yaml.d/10-net.yaml"),
        "service-node-port-range: 32767-30000\n",
    );
    let line = fails(server(dir.path(), &["-c", config.to_str().unwrap()], &[]));
    assert_eq!(
        line,
        format!(
            "r3s-server: {}: key \"service-node-port-range\": invalid value \"32767-30000\": the first port is above the last",
            dropin.display()
        )
    );
}

#[test]
fn bad_flag_value() {
    let dir = tempfile::tempdir().unwrap();
    let line = fails(server(
        dir.path(),
        &["--node-taint", "dedicated=edge:Never"],
        &[],
    ));
    assert!(
        line.starts_with(
            "r3s-server: invalid value 'dedicated=edge:Never' for '--node-taint <TAINT>': "
        ),
        "{line}"
    );
    assert!(
        line.ends_with("effect \"Never\" is not one of NoSchedule, PreferNoSchedule, NoExecute"),
        "{line}"
    );
    let line = fails(server(dir.path(), &["--kubelet-arg", "max-pods=lots"], &[]));
    assert_eq!(
        line,
        "r3s-server: invalid value 'max-pods=lots' for '--kubelet-arg <ARG>': max-pods=\"lots\": expected a positive whole number"
    );
    let line = fails(server(
        dir.path(),
        &["--write-kubeconfig-mode", "0999"],
        &[],
    ));
    assert!(
        line.contains("--write-kubeconfig-mode") && line.contains("not an octal file mode"),
        "{line}"
    );
}

#[test]
fn bad_env_value() {
    let dir = tempfile::tempdir().unwrap();
    let line = fails(server(
        dir.path(),
        &[],
        &[("R3S_SERVICE_CIDR", "10.43.0.0/40")],
    ));
    assert_eq!(
        line,
        "r3s-server: environment variable R3S_SERVICE_CIDR: invalid value \"10.43.0.0/40\": prefix length 40 is longer than 32"
    );
    let line = fails(server(dir.path(), &[], &[("R3S_DISABLE_AGENT", "yes")]));
    assert_eq!(
        line,
        "r3s-server: environment variable R3S_DISABLE_AGENT: invalid value \"yes\": expected true or false"
    );
}

#[test]
fn values_that_do_not_fit_together_name_their_sources() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        &dir.path().join("config.yaml"),
        "service-cidr: 10.96.0.0/16\n",
    );
    let line = fails(server(
        dir.path(),
        &["-c", config.to_str().unwrap()],
        &[("R3S_CLUSTER_DNS", "10.43.0.10")],
    ));
    assert_eq!(
        line,
        format!(
            "r3s-server: --cluster-dns 10.43.0.10 (from env R3S_CLUSTER_DNS) is not a usable address in --service-cidr 10.96.0.0/16 (from file {}): outside the network",
            config.display()
        )
    );
}

#[test]
fn unreadable_config() {
    let dir = tempfile::tempdir().unwrap();
    // A symlink loop cannot be read by anyone, root included.
    let looped = dir.path().join("loop.yaml");
    std::os::unix::fs::symlink(dir.path().join("loop2.yaml"), &looped).unwrap();
    std::os::unix::fs::symlink(&looped, dir.path().join("loop2.yaml")).unwrap();
    let line = fails(server(
        dir.path(),
        &["--config", looped.to_str().unwrap()],
        &[],
    ));
    assert!(
        line.starts_with(&format!(
            "r3s-server: {}: cannot read config file: ",
            looped.display()
        )),
        "{line}"
    );

    // A mode-000 file, when the tests do not run as root (root reads it anyway).
    let locked = write(&dir.path().join("locked.yaml"), "debug: true\n");
    std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    if std::fs::read(&locked).is_err() {
        let line = fails(server(
            dir.path(),
            &["--config", locked.to_str().unwrap()],
            &[],
        ));
        assert_eq!(
            line,
            format!(
                "r3s-server: {}: cannot read config file: Permission denied (os error 13)",
                locked.display()
            )
        );
    }

    let missing = dir.path().join("missing.yaml");
    let line = fails(server(
        dir.path(),
        &[],
        &[("R3S_CONFIG_FILE", missing.to_str().unwrap())],
    ));
    assert_eq!(
        line,
        format!("r3s-server: {}: config file not found", missing.display())
    );
}

#[test]
fn directory_as_config() {
    let dir = tempfile::tempdir().unwrap();
    let line = fails(server(
        dir.path(),
        &["--config", dir.path().to_str().unwrap()],
        &[],
    ));
    assert_eq!(
        line,
        format!(
            "r3s-server: {}: is a directory, not a config file",
            dir.path().display()
        )
    );
}

#[test]
fn etcd_datastore_is_refused_at_run_time() {
    let dir = tempfile::tempdir().unwrap();
    let line = fails(server(
        dir.path(),
        &["--datastore-endpoint", "https://127.0.0.1:2379"],
        &[],
    ));
    assert_eq!(
        line,
        "r3s-server: --datastore-endpoint https://127.0.0.1:2379: running on etcd is not implemented yet; leave --datastore-endpoint empty for the embedded SQLite store"
    );
    let line = fails(server(
        dir.path(),
        &["--datastore-endpoint", "mysql://db/k3s"],
        &[],
    ));
    assert!(line.contains("unsupported datastore"), "{line}");
}

#[test]
fn unusable_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(&dir.path().join("not-a-dir"), "");
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .args(["--disable-agent", "--node-name", "r3st-node", "--data-dir"])
        .arg(&file);
    let line = fails(cmd);
    assert_eq!(
        line,
        format!(
            "r3s-server: cannot create {}/server/db: Not a directory (os error 20)",
            file.display()
        )
    );
}

/// Kills the child if the test fails before it has been stopped cleanly.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn starts_creates_its_db_dir_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        &dir.path().join("config.yaml"),
        "cluster-cidr: 10.77.0.0/16\nhttps-listen-port: 7001\nnode-label: [from=file]\ndisable-agent: true\nwrite-kubeconfig-mode: 0o640\n",
    );
    std::fs::create_dir(dir.path().join("config.yaml.d")).unwrap();
    write(
        &dir.path().join("config.yaml.d/50-more.yaml"),
        "node-label+: [also=file]\ncluster-domain: edge.local\n",
    );
    let mut cmd = server(
        dir.path(),
        &[
            "--config",
            config.to_str().unwrap(),
            "--cluster-domain",
            "flag.local",
        ],
        &[
            ("R3S_HTTPS_LISTEN_PORT", "7002"),
            ("R3S_NODE_LABEL", "from=env"),
        ],
    );
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Running(child);

    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = Vec::new();
    // The timeout only keeps a broken server from hanging the suite; nothing is timed.
    while !log
        .iter()
        .any(|l: &String| l.contains("waiting for SIGINT or SIGTERM"))
    {
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(line) => log.push(line),
            Err(e) => panic!(
                "server did not report readiness ({e}); log so far:\n{}",
                log.join("\n")
            ),
        }
    }
    assert!(
        dir.path().join("data/server/db").is_dir(),
        "the server creates <data-dir>/server/db"
    );

    // SAFETY: kill(2) with the PID of the child this test spawned and still owns (not yet reaped).
    let rc = unsafe { libc::kill(child.0.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    let status = child.0.wait().unwrap();
    log.extend(rx.iter());
    let log = log.join("\n");
    assert_eq!(status.code(), Some(0), "log:\n{log}");
    assert!(log.contains("received SIGTERM"), "{log}");

    // Precedence, end to end: flag > env > file > default.
    let file_main = config.display().to_string();
    let file_dropin = dir
        .path()
        .join("config.yaml.d/50-more.yaml")
        .display()
        .to_string();
    for want in [
        format!("setting cluster-cidr=10.77.0.0/16 (from file {file_main})"),
        "setting https-listen-port=7002 (from env R3S_HTTPS_LISTEN_PORT)".to_owned(),
        "setting node-label=from=env (from env R3S_NODE_LABEL)".to_owned(),
        "setting cluster-domain=flag.local (from flag)".to_owned(),
        "setting service-cidr=10.43.0.0/16 (from default)".to_owned(),
        "setting disable-agent=true (from file".to_owned(),
        // YAML would read 0o640 as the number 416; the file layer keeps the text as written.
        format!("setting write-kubeconfig-mode=0640 (from file {file_main})"),
        format!("read config file file={file_dropin}"),
    ] {
        assert!(log.contains(&want), "missing {want:?} in log:\n{log}");
    }
    assert!(
        !log.contains("in-process agent is not implemented"),
        "--disable-agent from the file silences the warning"
    );
}
