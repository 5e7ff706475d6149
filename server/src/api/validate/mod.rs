//! Validation (and the create-only initial state). Generic rules (names) apply to every kind;
//! per-kind rules are small functions selected by kind here and nowhere else. Every failure is a
//! 422 `Invalid` with field paths and upstream's messages.

use serde_json::{Value, json};

use super::error::{ApiError, Cause};
use super::registry::Resource;

const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

/// Fills in what a new object starts with beyond the defaults of [`super::defaults`].
pub fn default_on_create(res: &Resource, obj: &mut Value) {
    if res.group.is_empty() && res.kind == "Namespace" {
        obj["status"] = json!({"phase": "Active"});
    }
    if res.group == super::crd::GROUP && res.kind == "CustomResourceDefinition" {
        super::crd::initial_status(obj);
    }
    super::defaults::apply(res, obj);
    if res.group == "batch" && res.kind == "Job" {
        super::defaults::job_selector_on_create(obj);
    }
}

mod batch;
mod kinds;
mod networking;
mod storage;

const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
const LABEL_KEY_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";

/// Fills in a custom resource's schema defaults (every write, as upstream; built-ins: nothing).
pub fn schema_defaults(res: &Resource, obj: &mut Value) {
    if let Some(schema) = super::crd_schema::schema_for(res) {
        super::crd_schema::apply_defaults(&schema, obj);
    }
}

/// Validates an object about to be stored (`old`: the stored version, for updates).
pub fn validate(res: &Resource, obj: &Value, old: Option<&Value>) -> Result<(), ApiError> {
    let mut causes = Vec::new();
    labels(&obj["metadata"]["labels"], &mut causes);
    kinds::check(res, obj, old, &mut causes);
    if let Some(schema) = super::crd_schema::schema_for(res) {
        causes.extend(super::crd_schema::validate(&schema, obj));
    }
    storage::check(res, obj, &mut causes);
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    if name.is_empty() {
        causes.push(Cause {
            reason: "FieldValueRequired",
            field: "metadata.name".into(),
            message: "Required value: name or generateName is required".into(),
        });
    } else {
        // Namespaces and Services need DNS labels (they become DNS names); RBAC objects only
        // need to be a URL path segment (`system:controller:...`); others subdomains.
        let label_only = res.group.is_empty() && matches!(res.kind, "Namespace" | "Service");
        let problem = if label_only {
            (!is_dns_label(name)).then_some(LABEL_MSG)
        } else if res.group == "rbac.authorization.k8s.io" {
            path_segment_problem(name)
        } else {
            (!is_dns_subdomain(name)).then_some(SUBDOMAIN_MSG)
        };
        if let Some(msg) = problem {
            causes.push(Cause {
                reason: "FieldValueInvalid",
                field: "metadata.name".into(),
                message: format!("Invalid value: {}: {msg}", json!(name)),
            });
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Invalid {
            group: res.group.into(),
            kind: res.kind.into(),
            name: name.into(),
            causes,
        })
    }
}

/// Why `name` cannot be one segment of a URL path, if it cannot (upstream's path-segment rule).
fn path_segment_problem(name: &str) -> Option<&'static str> {
    match name {
        "." => Some("may not be '.'"),
        ".." => Some("may not be '..'"),
        _ if name.contains('/') => Some("may not contain '/'"),
        _ if name.contains('%') => Some("may not contain '%'"),
        _ => None,
    }
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63 characters.
fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn labels(map: &Value, causes: &mut Vec<Cause>) {
    for (key, value) in map.as_object().into_iter().flatten() {
        let (prefix, name) = match key.split_once('/') {
            Some((prefix, name)) => (Some(prefix), name),
            None => (None, key.as_str()),
        };
        if !is_qualified_name_part(name) || prefix.is_some_and(|p| !is_dns_subdomain(p)) {
            causes.push(Cause {
                reason: "FieldValueInvalid",
                field: "metadata.labels".into(),
                message: format!("Invalid value: {}: {LABEL_KEY_MSG}", json!(key)),
            });
        }
        let text = value.as_str().unwrap_or("");
        if !value.is_string() || !(text.is_empty() || is_qualified_name_part(text)) {
            causes.push(Cause {
                reason: "FieldValueInvalid",
                field: "metadata.labels".into(),
                message: format!("Invalid value: {value}: {LABEL_VALUE_MSG}"),
            });
        }
    }
}

pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::registry::find;

    #[test]
    fn names_follow_rfc1123() {
        assert!(is_dns_subdomain("a.b-c.d1"));
        assert!(!is_dns_subdomain("X_"));
        assert!(!is_dns_subdomain("a..b"));
        assert!(!is_dns_label("a.b"));
        assert_eq!(path_segment_problem("system:controller:x"), None);
        assert_eq!(path_segment_problem("a/b"), Some("may not contain '/'"));
        assert_eq!(path_segment_problem(".."), Some("may not be '..'"));
        let cm = find("", "v1", "configmaps").expect("configmaps");
        let err = validate(cm, &json!({"metadata":{"name":"X_"}}), None).expect_err("invalid");
        assert!(err.to_string().starts_with(
            "ConfigMap \"X_\" is invalid: metadata.name: Invalid value: \"X_\": a lowercase RFC 1123 subdomain"
        ));
        assert_eq!(
            err.status()["details"]["causes"][0]["field"],
            "metadata.name"
        );
    }
}
