//! The JSONPath subset CRD `additionalPrinterColumns` use: `.a.b`, `.a[0]`, `.a[*]`, `['key.with.dots']`
//! and filters `[?(@.type=="Ready")]` (also `!=`, and single quotes). A column shows the first match;
//! no match (or a path outside the subset) shows nothing, as kubectl prints `<none>`.

use serde_json::Value;

enum Step {
    Field(String),
    Index(usize),
    All,
    Filter {
        field: Vec<String>,
        equal: bool,
        value: String,
    },
}

/// The first value `path` selects in `obj` (null when none).
pub fn first(obj: &Value, path: &str) -> Value {
    let Some(steps) = parse(path) else {
        return Value::Null;
    };
    let mut current: Vec<&Value> = vec![obj];
    for step in &steps {
        let mut next = Vec::new();
        for v in current {
            match step {
                Step::Field(f) => next.extend(v.get(f.as_str())),
                Step::Index(i) => next.extend(v.get(*i)),
                Step::All => match v {
                    Value::Array(items) => next.extend(items.iter()),
                    Value::Object(map) => next.extend(map.values()),
                    _ => {}
                },
                Step::Filter {
                    field,
                    equal,
                    value,
                } => {
                    for item in v.as_array().into_iter().flatten() {
                        let got = field.iter().try_fold(item, |o, f| o.get(f.as_str()));
                        let text = got.map(|g| match g {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        });
                        if (text.as_deref() == Some(value.as_str())) == *equal {
                            next.push(item);
                        }
                    }
                }
            }
        }
        current = next;
    }
    current.first().map_or(Value::Null, |v| (*v).clone())
}

fn parse(path: &str) -> Option<Vec<Step>> {
    let path = path.trim();
    let path = path
        .strip_prefix('{')
        .and_then(|p| p.strip_suffix('}'))
        .unwrap_or(path);
    let path = path.strip_prefix('$').unwrap_or(path);
    let mut steps = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            if end > 0 {
                steps.push(Step::Field(r[..end].to_string()));
            }
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = bracket_end(r)?;
            steps.push(bracket(&r[..end])?);
            rest = &r[end + 1..];
        } else {
            return None;
        }
    }
    Some(steps)
}

/// The index of the `]` closing a bracket (quotes may hold `]`).
fn bracket_end(s: &str) -> Option<usize> {
    let mut quote: Option<char> = None;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (None, '\'' | '"') => quote = Some(c),
            (None, ']') => return Some(i),
            _ => {}
        }
    }
    None
}

fn unquote(s: &str) -> Option<&str> {
    let s = s.trim();
    s.strip_prefix('\'')
        .and_then(|s| s.strip_suffix('\''))
        .or_else(|| s.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
}

fn bracket(inner: &str) -> Option<Step> {
    let inner = inner.trim();
    if inner == "*" {
        return Some(Step::All);
    }
    if let Ok(i) = inner.parse::<usize>() {
        return Some(Step::Index(i));
    }
    if let Some(key) = unquote(inner) {
        return Some(Step::Field(key.to_string()));
    }
    let cond = inner.strip_prefix("?(")?.strip_suffix(')')?.trim();
    let (lhs, equal, rhs) = if let Some((l, r)) = cond.split_once("!=") {
        (l, false, r)
    } else {
        let (l, r) = cond.split_once("==")?;
        (l, true, r)
    };
    let field = lhs
        .trim()
        .strip_prefix("@.")?
        .split('.')
        .map(str::to_string)
        .collect();
    let rhs = rhs.trim();
    let value = unquote(rhs).unwrap_or(rhs).to_string();
    Some(Step::Filter {
        field,
        equal,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn printer_column_paths() {
        let obj = json!({
            "spec": {"replicas": 3, "hosts": ["a", "b"], "labels": {"app.kubernetes.io/name": "x"}},
            "status": {"conditions": [
                {"type": "Synced", "status": "False"},
                {"type": "Ready", "status": "True", "reason": "Up"}
            ]}
        });
        assert_eq!(first(&obj, ".spec.replicas"), json!(3));
        assert_eq!(first(&obj, ".spec.hosts[1]"), json!("b"));
        assert_eq!(first(&obj, ".spec.hosts[*]"), json!("a"));
        assert_eq!(
            first(&obj, ".spec.labels['app.kubernetes.io/name']"),
            json!("x")
        );
        assert_eq!(
            first(&obj, r#".status.conditions[?(@.type=="Ready")].status"#),
            json!("True")
        );
        assert_eq!(
            first(&obj, ".status.conditions[?(@.type!='Ready')].type"),
            json!("Synced")
        );
        assert_eq!(first(&obj, "{.spec.replicas}"), json!(3));
        assert_eq!(first(&obj, ".spec.missing"), Value::Null);
        assert_eq!(first(&obj, ".spec.hosts[9]"), Value::Null);
        assert_eq!(first(&obj, "spec"), Value::Null, "not a path: no match");
    }
}
