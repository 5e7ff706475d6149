//! Downward API files (plain `downwardAPI` volumes and `projected` sources): each item a file
//! holding one fact about the pod. `fieldRef` reads `metadata.name|namespace|uid`, one label or
//! annotation (`metadata.labels['k']`), or all of them (`metadata.labels`: one `key="value"` line
//! per entry, sorted by key, values quoted as Go's `%q`, no final newline, as kubelet writes
//! them), and, as for environment variables, `spec.nodeName`, `spec.serviceAccountName` and
//! `status.hostIP|podIP` (upstream's validation allows only the metadata ones in volumes);
//! `resourceFieldRef` reads a limit or request of the container it names.

use k8s_openapi::api::core::v1::{DownwardAPIVolumeFile, Pod};

use super::VolumeError;
use super::atomic::File;
use crate::pods::env::{self, Facts};

/// The files of `items`, each with its `mode` or `default_mode`.
pub fn files(
    pod: &Pod,
    facts: &Facts,
    items: &[DownwardAPIVolumeFile],
    default_mode: i32,
) -> Result<Vec<File>, VolumeError> {
    let mut out = Vec::new();
    for item in items {
        let error = |message: String| VolumeError::Downward {
            path: item.path.clone(),
            message,
        };
        let value = if let Some(f) = &item.field_ref {
            field(pod, facts, &item.path, &f.field_path).map_err(error)?
        } else if let Some(r) = &item.resource_field_ref {
            let name = r.container_name.as_deref().unwrap_or("");
            let spec = pod.spec.as_ref();
            let container = spec
                .into_iter()
                .flat_map(|s| {
                    s.containers
                        .iter()
                        .chain(s.init_containers.iter().flatten())
                })
                .find(|c| c.name == name)
                .ok_or_else(|| error(format!("no container named {name:?}")))?;
            env::resource(
                container,
                facts,
                &item.path,
                &r.resource,
                r.divisor.as_ref().map(|d| d.0.as_str()),
            )
            .map_err(|e| error(e.to_string()))?
        } else {
            return Err(error("neither fieldRef nor resourceFieldRef".into()));
        };
        out.push(File {
            path: item.path.clone(),
            data: value.into_bytes(),
            mode: (item.mode.unwrap_or(default_mode) as u32) & 0o777,
        });
    }
    Ok(out)
}

fn field(pod: &Pod, facts: &Facts, path: &str, field_path: &str) -> Result<String, String> {
    let m = &pod.metadata;
    match field_path {
        "metadata.labels" => Ok(format_map(m.labels.as_ref())),
        "metadata.annotations" => Ok(format_map(m.annotations.as_ref())),
        other => env::field(pod, facts, path, other).map_err(|e| e.to_string()),
    }
}

/// kubelet's rendering of a whole label or annotation map.
pub fn format_map(map: Option<&std::collections::BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A string as Go's `%q` prints it (printable runes as they are, the usual escapes otherwise).
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn facts() -> Facts {
        Facts {
            host_ip: "198.51.100.7".parse().unwrap(),
            pod_ip: Some("10.42.0.9".parse().unwrap()),
            node_milli_cpu: 4000,
            node_memory_bytes: 1 << 30,
        }
    }

    #[test]
    fn labels_annotations_and_fields_render_as_kubelet() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "apps", "uid": "u-1",
                "labels": {"tier": "front", "app": "web"},
                "annotations": {"note": "say \"hi\"\nbye"}},
            "spec": {"nodeName": "pi4", "containers": [{"name": "c", "image": "x",
                "resources": {"limits": {"memory": "64Mi"}}}]}
        }))
        .unwrap();
        let items: Vec<DownwardAPIVolumeFile> = serde_json::from_value(json!([
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}, "mode": 0o600},
            {"path": "tier", "fieldRef": {"fieldPath": "metadata.labels['tier']"}},
            {"path": "meta/name", "fieldRef": {"fieldPath": "metadata.name"}},
            {"path": "uid", "fieldRef": {"fieldPath": "metadata.uid"}},
            {"path": "mem", "resourceFieldRef": {"containerName": "c", "resource": "limits.memory", "divisor": "1Mi"}},
        ]))
        .unwrap();
        let files = files(&pod, &facts(), &items, 0o644).unwrap();
        let text = |p: &str| {
            files
                .iter()
                .find(|f| f.path == p)
                .map(|f| String::from_utf8(f.data.clone()).unwrap())
                .unwrap()
        };
        assert_eq!(text("labels"), "app=\"web\"\ntier=\"front\"");
        assert_eq!(text("annotations"), "note=\"say \\\"hi\\\"\\nbye\"");
        assert_eq!(text("tier"), "front");
        assert_eq!(text("meta/name"), "web");
        assert_eq!(text("uid"), "u-1");
        assert_eq!(text("mem"), "64");
        assert_eq!(files[1].mode, 0o600);
        assert_eq!(files[0].mode, 0o644);

        let bad: Vec<DownwardAPIVolumeFile> = serde_json::from_value(json!([
            {"path": "x", "resourceFieldRef": {"containerName": "nope", "resource": "limits.cpu"}}
        ]))
        .unwrap();
        assert!(super::files(&pod, &facts(), &bad, 0o644).is_err());
    }
}
