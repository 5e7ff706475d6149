//! Resolver tests against a small command shaped like the real ones, with real temp files and an
//! explicit environment (the process environment is never read or changed).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::Parser;

use super::*;
use crate::{Ipv4Cidr, Label};

#[derive(Parser, Debug)]
#[command(name = "r3s-test")]
struct TestCli {
    #[arg(
        long,
        short = 'c',
        env = "R3S_CONFIG_FILE",
        default_value = "/nonexistent/r3s-test/config.yaml"
    )]
    config: PathBuf,
    #[arg(long, env = "R3S_CLUSTER_CIDR", default_value = "10.42.0.0/16")]
    cluster_cidr: Ipv4Cidr,
    #[arg(long, env = "R3S_HTTPS_LISTEN_PORT", default_value_t = 6443)]
    https_listen_port: u16,
    #[arg(long, env = "R3S_NODE_LABEL", value_delimiter = ',')]
    node_label: Vec<Label>,
    #[arg(long, env = "R3S_DEBUG")]
    debug: bool,
    #[arg(
        long,
        short = 'o',
        env = "R3S_KUBECONFIG_OUTPUT",
        default_value = "/etc/r3s/r3s.yaml"
    )]
    write_kubeconfig: PathBuf,
}

fn env(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
    pairs
        .iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        .collect()
}

fn run(args: &[&str], vars: &[(&str, &str)]) -> Result<Resolved<TestCli>, ConfigError> {
    let mut argv = vec!["r3s-test"];
    argv.extend_from_slice(args);
    resolve::<TestCli, _, _>(argv, env(vars))
}

fn labels(cli: &TestCli) -> Vec<String> {
    cli.node_label.iter().map(ToString::to_string).collect()
}

/// A temp dir with `config.yaml` holding `text`.
fn config(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn defaults_when_nothing_is_set() {
    let r = run(&[], &[]).unwrap();
    assert_eq!(r.cli.cluster_cidr.to_string(), "10.42.0.0/16");
    assert_eq!(r.cli.https_listen_port, 6443);
    assert!(!r.cli.debug && r.cli.node_label.is_empty());
    assert!(
        r.config_files.is_empty(),
        "a missing default config file is fine"
    );
    assert_eq!(r.sources.get("https-listen-port"), &Source::Default);
    assert_eq!(r.sources.get("config"), &Source::Default);
}

#[test]
fn flag_beats_env_beats_file_beats_default() {
    let (_dir, path) = config(
        "cluster-cidr: 10.99.0.0/16\nhttps-listen-port: 7001\nnode-label: [from=file]\ndebug: true\n",
    );
    let vars = [
        ("R3S_CONFIG_FILE", s(&path)),
        ("R3S_HTTPS_LISTEN_PORT", "7002"),
        ("R3S_NODE_LABEL", "from=env,second=env"),
        ("R3S_DEBUG", "false"),
    ];
    let r = run(&["--https-listen-port", "7003"], &vars).unwrap();
    assert_eq!(r.cli.https_listen_port, 7003);
    assert_eq!(
        labels(&r.cli),
        ["from=env", "second=env"],
        "env replaces the file's list"
    );
    assert!(!r.cli.debug, "env false beats file true");
    assert_eq!(r.cli.cluster_cidr.to_string(), "10.99.0.0/16");
    assert_eq!(r.cli.write_kubeconfig, PathBuf::from("/etc/r3s/r3s.yaml"));
    assert_eq!(r.config_files, vec![path.clone()]);
    assert_eq!(r.sources.get("https-listen-port"), &Source::Flag);
    assert_eq!(
        r.sources.get("node-label"),
        &Source::Env("R3S_NODE_LABEL".into())
    );
    assert_eq!(r.sources.get("cluster-cidr"), &Source::File(path.clone()));
    assert_eq!(r.sources.get("write-kubeconfig"), &Source::Default);
    assert_eq!(
        r.sources.get("config"),
        &Source::Env("R3S_CONFIG_FILE".into())
    );
    assert_eq!(r.cli.config, path);
    assert_eq!(
        r.sources.describe("cluster-cidr"),
        format!("--cluster-cidr (from file {})", path.display())
    );
    assert_eq!(
        r.sources.describe("https-listen-port"),
        "--https-listen-port"
    );

    // Without the flag the env value shows through; without env, the file's.
    let r = run(&[], &vars).unwrap();
    assert_eq!(r.cli.https_listen_port, 7002);
    let r = run(&["-c", s(&path)], &[]).unwrap();
    assert_eq!(r.cli.https_listen_port, 7001);
    assert!(r.cli.debug);
    assert_eq!(labels(&r.cli), ["from=file"]);
    // A flag given on the command line replaces, not extends, a list from lower sources.
    let r = run(&["-c", s(&path), "--node-label", "a=1,b=2"], &[]).unwrap();
    assert_eq!(labels(&r.cli), ["a=1", "b=2"]);
}

#[test]
fn config_flag_beats_config_env() {
    let (_dir, a) = config("https-listen-port: 1\n");
    let (_dir2, b) = config("https-listen-port: 2\n");
    let r = run(&["--config", s(&a)], &[("R3S_CONFIG_FILE", s(&b))]).unwrap();
    assert_eq!(r.cli.https_listen_port, 1);
    assert_eq!(r.config_files, vec![a]);
}

#[test]
fn drop_ins_apply_in_name_order_and_plus_appends() {
    let (dir, path) = config("node-label: [a=1]\nhttps-listen-port: 7000\n");
    let d = dir.path().join("config.yaml.d");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("20-port.yaml"), "https-listen-port: 7020\n").unwrap();
    std::fs::write(
        d.join("10-port.yaml"),
        "https-listen-port: 7010\nnode-label+: b=2\n",
    )
    .unwrap();
    std::fs::write(d.join("30-labels.yml"), "node-label+: [c=3, d=4]\n").unwrap();
    std::fs::write(d.join("99-notes.txt"), "this: is not read\n").unwrap();
    let r = run(&["-c", s(&path)], &[]).unwrap();
    assert_eq!(r.cli.https_listen_port, 7020);
    assert_eq!(labels(&r.cli), ["a=1", "b=2", "c=3", "d=4"]);
    assert_eq!(
        r.sources.get("node-label"),
        &Source::File(d.join("30-labels.yml"))
    );
    assert_eq!(r.config_files.len(), 4);

    // A plain key in a later drop-in replaces what came before.
    std::fs::write(d.join("40-reset.yaml"), "node-label: x=9\n").unwrap();
    let r = run(&["-c", s(&path)], &[]).unwrap();
    assert_eq!(labels(&r.cli), ["x=9"]);
}

#[test]
fn short_keys_and_yaml_scalars() {
    let (_dir, path) = config("o: /tmp/r3s-test/kubeconfig\nhttps-listen-port: 8443\ndebug: yes\n");
    let err = run(&["-c", s(&path)], &[]).unwrap_err().to_string();
    // YAML 1.2 (serde_yaml) reads `yes` as a string; switches take true/false only.
    assert!(
        err.ends_with("key \"debug\": invalid value \"yes\": expected true or false"),
        "{err}"
    );
    std::fs::write(
        &path,
        "o: /tmp/r3s-test/kubeconfig\nhttps-listen-port: 8443\ndebug: TRUE\n",
    )
    .unwrap();
    let r = run(&["-c", s(&path)], &[]).unwrap();
    assert_eq!(
        r.cli.write_kubeconfig,
        PathBuf::from("/tmp/r3s-test/kubeconfig")
    );
    assert!(r.cli.debug);
}

#[test]
fn unknown_key_is_named_with_a_suggestion() {
    let (_dir, path) = config("cluster-cidrs: 10.42.0.0/16\n");
    let err = run(&["-c", s(&path)], &[]).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{}: unknown key \"cluster-cidrs\" (did you mean \"cluster-cidr\"?)",
            path.display()
        )
    );
    std::fs::write(&path, "flannel-backend: vxlan\n").unwrap();
    let err = run(&["-c", s(&path)], &[]).unwrap_err().to_string();
    assert_eq!(
        err,
        format!("{}: unknown key \"flannel-backend\"", path.display())
    );
}

#[test]
fn bad_file_values_name_file_key_and_reason() {
    let (dir, path) = config("https-listen-port: 6443\n");
    let d = dir.path().join("config.yaml.d");
    std::fs::create_dir(&d).unwrap();
    let dropin = d.join("50-net.yaml");
    let cases = [
        (
            "cluster-cidr: 10.42.0.0/33\n",
            "key \"cluster-cidr\": invalid value \"10.42.0.0/33\": prefix length 33 is longer than 32",
        ),
        (
            "https-listen-port: 70000\n",
            "key \"https-listen-port\": invalid value \"70000\": 70000 is not in 0..=65535",
        ),
        (
            "node-label: [ok=1, bad]\n",
            "key \"node-label\": invalid value \"bad\": \"bad\" is not a label (expected key=value)",
        ),
        (
            "config: /etc/other.yaml\n",
            "key \"config\" cannot be set in a config file",
        ),
        (
            "cluster-cidr+: 10.42.0.0/16\n",
            "key \"cluster-cidr+\": only list flags can be appended to, and --cluster-cidr takes a single value",
        ),
        (
            "cluster-cidr: [10.42.0.0/16]\n",
            "key \"cluster-cidr\" takes a single value, not a list",
        ),
        ("cluster-cidr:\n", "key \"cluster-cidr\" has no value"),
    ];
    for (text, want) in cases {
        std::fs::write(&dropin, text).unwrap();
        let err = run(&["-c", s(&path)], &[]).unwrap_err().to_string();
        assert_eq!(err, format!("{}: {want}", dropin.display()), "{text:?}");
    }
}

#[test]
fn bad_env_values_name_the_variable() {
    let err = run(&[], &[("R3S_HTTPS_LISTEN_PORT", "http")])
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "environment variable R3S_HTTPS_LISTEN_PORT: invalid value \"http\": invalid digit found in string"
    );
    let err = run(&[], &[("R3S_DEBUG", "on")]).unwrap_err().to_string();
    assert_eq!(
        err,
        "environment variable R3S_DEBUG: invalid value \"on\": expected true or false"
    );
    let err = run(&[], &[("R3S_NODE_LABEL", "a=1,=2")])
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("environment variable R3S_NODE_LABEL: invalid value \"=2\""),
        "{err}"
    );
    // Empty counts as unset, as with clap.
    assert_eq!(
        run(&[], &[("R3S_HTTPS_LISTEN_PORT", "")])
            .unwrap()
            .cli
            .https_listen_port,
        6443
    );
}

#[test]
fn bad_flags_are_one_line() {
    let err = run(&["--https-listen-port", "x"], &[]).unwrap_err();
    assert!(matches!(err, ConfigError::Usage(_)));
    let line = err.to_string();
    assert!(!line.contains('\n'), "{line}");
    assert!(
        line.starts_with("invalid value 'x' for '--https-listen-port <HTTPS_LISTEN_PORT>'"),
        "{line}"
    );
    let line = run(&["--cluster-cidrs=10.0.0.0/8"], &[])
        .unwrap_err()
        .to_string();
    assert!(
        line.contains("unexpected argument '--cluster-cidrs' found")
            && line.contains("'--cluster-cidr'"),
        "{line}"
    );
}

#[test]
fn explicit_config_must_be_a_readable_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.yaml");
    let err = run(&["-c", s(&missing)], &[]).unwrap_err().to_string();
    assert_eq!(err, format!("{}: config file not found", missing.display()));
    let err = run(&[], &[("R3S_CONFIG_FILE", s(&missing))])
        .unwrap_err()
        .to_string();
    assert_eq!(err, format!("{}: config file not found", missing.display()));
    let err = run(&["-c", s(dir.path())], &[]).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{}: is a directory, not a config file",
            dir.path().display()
        )
    );
    let (_d, bad) = config("https-listen-port: [1\n");
    let err = run(&["-c", s(&bad)], &[]).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("{}: invalid YAML: ", bad.display())),
        "{err}"
    );
    assert!(!err.contains('\n'), "{err}");
}

#[test]
fn help_lists_env_names_but_not_values() {
    let err = run(&["--help"], &[]).unwrap_err();
    let ConfigError::Help(help) = err else {
        panic!("expected help, got {err}")
    };
    let text = help.render().to_string();
    assert!(
        text.contains("--cluster-cidr") && text.contains("R3S_CLUSTER_CIDR"),
        "{text}"
    );
}

#[test]
fn suggestions() {
    let known = ["cluster-cidr", "service-cidr", "node-label", "token"];
    assert_eq!(
        suggest("cluster-cidrs", known.iter().copied()).as_deref(),
        Some("cluster-cidr")
    );
    assert_eq!(
        suggest("node-lable", known.iter().copied()).as_deref(),
        Some("node-label")
    );
    assert_eq!(suggest("flannel-backend", known.iter().copied()), None);
    assert_eq!(suggest("x", known.iter().copied()), None);
    assert_eq!(edit_distance("kitten", "sitting"), 3);
}
