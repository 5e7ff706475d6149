//! Label selectors (`=`, `==`, `!=`, `in`, `notin`, `key`, `!key`) and field selectors (`=`, `==`,
//! `!=` on the fields the apiserver supports for each kind). Parse errors and unsupported fields are
//! 400 BadRequest, with upstream's `field label not supported` wording for the latter.

use serde_json::Value;

use super::error::ApiError;
use super::registry::Resource;

#[derive(Clone, Debug, PartialEq, Eq)]
enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector; empty matches everything.
#[derive(Clone, Debug, Default)]
pub struct LabelSelector(Vec<LabelReq>);

/// A parsed field selector; empty matches everything.
#[derive(Clone, Debug, Default)]
pub struct FieldSelector(Vec<(String, bool, String)>);

/// Splits on commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0i32, 0usize, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

impl LabelSelector {
    pub fn parse(text: &str) -> Result<LabelSelector, ApiError> {
        let bad = |part: &str| {
            ApiError::BadRequest(format!(
                "unable to parse requirement: invalid label selector: {part:?}"
            ))
        };
        let mut reqs = Vec::new();
        for part in split_top(text) {
            let req = if let Some(key) = part.strip_prefix('!') {
                LabelReq::NotExists(key.trim().to_string())
            } else if let Some((k, v)) = part.split_once("!=") {
                LabelReq::NotEq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==") {
                LabelReq::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once('=') {
                LabelReq::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, set)) = set_op(part, " notin ") {
                LabelReq::NotIn(k, set.ok_or_else(|| bad(part))?)
            } else if let Some((k, set)) = set_op(part, " in ") {
                LabelReq::In(k, set.ok_or_else(|| bad(part))?)
            } else if part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
            {
                LabelReq::Exists(part.to_string())
            } else {
                return Err(bad(part));
            };
            reqs.push(req);
        }
        Ok(LabelSelector(reqs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True if the object's `metadata.labels` satisfy every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|req| match req {
            LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => get(k) != Some(v.as_str()),
            LabelReq::In(k, set) => get(k).is_some_and(|x| set.iter().any(|s| s == x)),
            LabelReq::NotIn(k, set) => get(k).is_none_or(|x| !set.iter().any(|s| s == x)),
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::NotExists(k) => get(k).is_none(),
        })
    }
}

/// `key in (a, b)` → (key, Some([a, b])); `None` if `op` is absent; `Some((key, None))` if malformed.
fn set_op(part: &str, op: &str) -> Option<(String, Option<Vec<String>>)> {
    let (key, rest) = part.split_once(op)?;
    let values = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .map(|inner| inner.split(',').map(|v| v.trim().to_string()).collect());
    Some((key.trim().to_string(), values))
}

impl FieldSelector {
    pub fn parse(text: &str, res: &Resource) -> Result<FieldSelector, ApiError> {
        let mut reqs = Vec::new();
        for part in split_top(text) {
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(ApiError::BadRequest(format!(
                    "invalid field selector: {part:?}: expected an operator"
                )));
            };
            let field = field.trim();
            if !supported_field(res, field) {
                return Err(ApiError::BadRequest(format!(
                    "field label not supported: {field}"
                )));
            }
            reqs.push((field.to_string(), equal, value.trim().to_string()));
        }
        Ok(FieldSelector(reqs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0
            .iter()
            .all(|(field, equal, want)| (field_value(obj, field) == *want) == *equal)
    }
}

/// Field paths each kind can be selected on (upstream's per-kind field label conversions).
fn supported_field(res: &Resource, field: &str) -> bool {
    if matches!(field, "metadata.name" | "metadata.namespace") {
        return true;
    }
    let extra: &[&str] = match (res.group, res.kind) {
        ("", "Pod") => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        ("", "Event") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        ("", "Secret") => &["type"],
        ("", "Namespace") => &["status.phase"],
        ("", "Node") => &["spec.unschedulable"],
        ("apps", "ReplicaSet") => &["status.replicas"],
        _ => &[],
    };
    extra.contains(&field)
}

/// A field's value as the apiserver renders it for selection (missing → empty string).
fn field_value(obj: &Value, path: &str) -> String {
    let value = if path == "source" {
        &obj["source"]["component"]
    } else {
        path.split('.').fold(obj, |v, key| &v[key])
    };
    match value {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => match path {
            "spec.unschedulable" | "spec.hostNetwork" => "false".into(),
            _ => String::new(),
        },
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::registry::find;
    use serde_json::json;

    #[test]
    fn label_selectors() {
        let obj = json!({"metadata":{"labels":{"app":"web","tier":"fe"}}});
        for (sel, want) in [
            ("app=web", true),
            ("app==web,tier=fe", true),
            ("app!=web", false),
            ("app in (db, web)", true),
            ("app notin (web)", false),
            ("tier,!missing", true),
            ("missing", false),
            ("app in (db),tier=fe", false),
            ("", true),
        ] {
            let parsed = LabelSelector::parse(sel).expect(sel);
            assert_eq!(parsed.matches(&obj), want, "{sel}");
        }
        assert!(LabelSelector::parse("app in db").is_err());
    }

    #[test]
    fn field_selectors() {
        let pods = find("", "v1", "pods").expect("pods");
        let pod = json!({"metadata":{"name":"p","namespace":"d"},"spec":{"nodeName":"n1"},"status":{"phase":"Running"}});
        let sel =
            FieldSelector::parse("spec.nodeName=n1,status.phase!=Failed", pods).expect("parse");
        assert!(sel.matches(&pod));
        let sel = FieldSelector::parse("metadata.name=q", pods).expect("parse");
        assert!(!sel.matches(&pod));
        let cms = find("", "v1", "configmaps").expect("configmaps");
        let err = FieldSelector::parse("spec.nodeName=n1", cms).expect_err("unsupported");
        assert_eq!(err.to_string(), "field label not supported: spec.nodeName");
    }
}
