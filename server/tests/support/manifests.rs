//! YAML manifests several controller tests apply, rendered from a few parameters so each test
//! states only what it varies.

/// A Deployment `name` in `namespace` with `replicas` pods labelled `app: <name>`, running
/// `containers` (a YAML flow sequence).
pub fn deployment(name: &str, namespace: &str, replicas: u32, containers: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers: {containers}
"#
    )
}

/// The pod template of the Jobs: never restarted, one container `container` from
/// `registry.example/<container>:1`.
fn job_pod_template(container: &str) -> String {
    format!(
        "{{spec: {{restartPolicy: Never, containers: [{{name: {container}, image: registry.example/{container}:1}}]}}}}"
    )
}

/// A Job `name` in `default` whose pods run `container`; `spec` holds more lines of its spec,
/// indented by two spaces (or nothing).
pub fn job(name: &str, container: &str, spec: &str) -> String {
    let template = job_pod_template(container);
    batch("Job", name, &format!("{spec}\n  template: {template}"))
}

/// A CronJob `name` in `default` firing every minute, whose Jobs' pods run `container`; `spec`
/// holds more lines of its spec, indented by two spaces (or nothing).
pub fn cronjob(name: &str, container: &str, spec: &str) -> String {
    let template = job_pod_template(container);
    batch(
        "CronJob",
        name,
        &format!(
            "  schedule: \"* * * * *\"\n{spec}\n  jobTemplate: {{spec: {{template: {template}}}}}"
        ),
    )
}

/// A `batch/v1` object of `kind` named `name` in `default` with the lines of `spec`.
fn batch(kind: &str, name: &str, spec: &str) -> String {
    format!(
        "\napiVersion: batch/v1\nkind: {kind}\nmetadata: {{name: {name}, namespace: default}}\nspec:\n{spec}\n"
    )
}
