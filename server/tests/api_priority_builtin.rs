//! End to end, with the real kubectl (`/usr/bin/kubectl`, v1.32) against the API over HTTPS on a
//! real SQLite store: the built-in PriorityClasses `system-node-critical` and
//! `system-cluster-critical` exist from the start, cannot be deleted (upstream's Forbidden), keep
//! their value, and no user class may take the `system-` prefix unless it is exactly a built-in.
//!
//! Without kubectl the test prints `skipped:` (or fails when `CI=true`).

#[path = "support/kubectl_api.rs"]
mod kubectl_api;

use kubectl_api::{Options, have_kubectl, start};

fn class_yaml(name: &str, value: i64, extra: &str) -> String {
    format!(
        "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {{name: {name}}}\nvalue: {value}\n{extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_built_in_priority_classes_are_protected() {
    if !have_kubectl() {
        return;
    }
    let server = start(Options::default()).await;

    // Both built-ins are served from the start.
    let listed = server.ok(&["get", "priorityclass", "-o", "name"]).await;
    for name in ["system-node-critical", "system-cluster-critical"] {
        assert!(
            listed.contains(&format!("priorityclass.scheduling.k8s.io/{name}")),
            "{listed}"
        );
    }

    // Deleting one is Forbidden, with upstream's words, and changes nothing.
    for name in ["system-node-critical", "system-cluster-critical"] {
        let err = server
            .fails_with(1, &["delete", "priorityclass", name])
            .await;
        assert_eq!(
            err.trim(),
            format!(
                "Error from server (Forbidden): priorityclasses.scheduling.k8s.io \"{name}\" is forbidden: this is a system priority class and cannot be deleted"
            )
        );
    }
    let err = server
        .fails_with(
            1,
            &["delete", "pc", "system-node-critical", "--dry-run=server"],
        )
        .await;
    assert!(
        err.contains("this is a system priority class and cannot be deleted"),
        "{err}"
    );
    let value = server
        .ok(&[
            "get",
            "pc",
            "system-node-critical",
            "-o",
            "jsonpath={.value}",
        ])
        .await;
    assert_eq!(value, "2000001000");
    let listed = server.ok(&["get", "pc"]).await;
    assert!(
        listed.contains("system-node-critical") && listed.contains("system-cluster-critical"),
        "{listed}"
    );

    // Their value is immutable like any class's; their labels are not.
    let err = server
        .fails_with(
            1,
            &[
                "patch",
                "pc",
                "system-cluster-critical",
                "--type=merge",
                "-p",
                "{\"value\": 5}",
            ],
        )
        .await;
    assert!(
        err.contains("\"system-cluster-critical\" is invalid: value: Forbidden: may not be changed in an update."),
        "{err}"
    );
    server
        .ok(&["label", "pc", "system-cluster-critical", "team=platform"])
        .await;

    // The reserved prefix: a new name, a built-in's name with another value or as the global
    // default, each with upstream's reason.
    for (file, name, value, extra, why) in [
        (
            "mine.yaml",
            "system-mine",
            100,
            "",
            "system-mine is not a known system priority class",
        ),
        (
            "nodevalue.yaml",
            "system-node-critical",
            7,
            "",
            "value of system-node-critical PriorityClass must be 2000001000",
        ),
        (
            "default.yaml",
            "system-cluster-critical",
            2_000_000_000,
            "globalDefault: true\n",
            "globalDefault of system-cluster-critical PriorityClass must be false",
        ),
    ] {
        let path = server.write(file, &class_yaml(name, value, extra));
        let (code, stdout, err) = server.kubectl_code(&["create", "-f", &path]).await;
        assert_eq!(code, Some(1), "{stdout}{err}");
        // Validation comes before the store, so a built-in's own name gets the same reason.
        assert_eq!(
            err.trim(),
            format!(
                "The PriorityClass \"{name}\" is invalid: metadata.name: Forbidden: priority class names with 'system-' prefix are reserved for system use only. error: {why}"
            )
        );
    }
    let err = server
        .fails_with(
            1,
            &["create", "priorityclass", "system-other", "--value=10"],
        )
        .await;
    assert!(
        err.contains(
            "reserved for system use only. error: system-other is not a known system priority class"
        ),
        "{err}"
    );

    // Outside the prefix, the user bound applies; a user class can be deleted.
    let err = server
        .fails_with(
            1,
            &["create", "priorityclass", "huge", "--value=1000000001"],
        )
        .await;
    assert!(
        err.contains(
            "value: Forbidden: maximum allowed value of a user defined priority is 1000000000"
        ),
        "{err}"
    );
    server
        .ok(&["create", "priorityclass", "batch", "--value=1000"])
        .await;
    // kubectl sends that one as protobuf.
    let value = server
        .ok(&[
            "get",
            "pc",
            "batch",
            "-o",
            "jsonpath={.value} {.preemptionPolicy}",
        ])
        .await;
    assert_eq!(value, "1000 PreemptLowerPriority");
    server.ok(&["delete", "priorityclass", "batch"]).await;
    let (code, _, err) = server.kubectl_code(&["get", "pc", "batch"]).await;
    assert_eq!(code, Some(1), "{err}");
}
