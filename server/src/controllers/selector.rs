//! Matching `metav1.LabelSelector`s (matchLabels + matchExpressions) and node selector terms against
//! label maps, as the control loops and the scheduler need them. An empty selector matches
//! everything; a missing one matches nothing (upstream's rule for workload selectors).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::NodeSelectorRequirement;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// True if `labels` satisfy `selector`.
pub fn matches(selector: &LabelSelector, labels: Option<&BTreeMap<String, String>>) -> bool {
    let empty = BTreeMap::new();
    let labels = labels.unwrap_or(&empty);
    let by_labels = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = selector.match_expressions.iter().flatten().all(|req| {
        let values = req.values.as_deref().unwrap_or(&[]);
        requirement(&req.key, &req.operator, values, labels)
    });
    by_labels && by_expressions
}

/// True if the selector selects nothing at all (no labels, no expressions): upstream refuses to
/// let a workload adopt every pod in the namespace, and so do we.
pub fn is_empty(selector: &LabelSelector) -> bool {
    selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(|e| e.is_empty())
}

/// One `key op values` requirement (`In`, `NotIn`, `Exists`, `DoesNotExist`, and for nodes `Gt`,
/// `Lt`); an unknown operator matches nothing.
pub fn requirement(
    key: &str,
    operator: &str,
    values: &[String],
    labels: &BTreeMap<String, String>,
) -> bool {
    let value = labels.get(key);
    match operator {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(have), Some(want)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|v| v.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if operator == "Gt" {
                have > want
            } else {
                have < want
            }
        }
        _ => false,
    }
}

/// A node selector term's label requirements, ANDed.
pub fn node_requirements(
    reqs: &[NodeSelectorRequirement],
    labels: &BTreeMap<String, String>,
) -> bool {
    reqs.iter().all(|r| {
        requirement(
            &r.key,
            &r.operator,
            r.values.as_deref().unwrap_or(&[]),
            labels,
        )
    })
}

/// The selector in the `a=b,c in (d)` text form list calls take.
pub fn to_query(selector: &LabelSelector) -> String {
    let mut parts: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for req in selector.match_expressions.iter().flatten() {
        let values = req.values.as_deref().unwrap_or(&[]).join(",");
        parts.push(match req.operator.as_str() {
            "In" => format!("{} in ({values})", req.key),
            "NotIn" => format!("{} notin ({values})", req.key),
            "Exists" => req.key.clone(),
            _ => format!("!{}", req.key),
        });
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn match_labels_and_expressions_are_anded() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "NotIn".into(),
                values: Some(vec!["db".into()]),
            }]),
        };
        assert!(matches(&sel, Some(&labels(&[("app", "web")]))));
        assert!(matches(
            &sel,
            Some(&labels(&[("app", "web"), ("tier", "fe")]))
        ));
        assert!(!matches(
            &sel,
            Some(&labels(&[("app", "web"), ("tier", "db")]))
        ));
        assert!(!matches(&sel, None));
        assert_eq!(to_query(&sel), "app=web,tier notin (db)");
    }

    #[test]
    fn numeric_operators() {
        let l = labels(&[("cores", "4")]);
        assert!(requirement("cores", "Gt", &["3".into()], &l));
        assert!(!requirement("cores", "Lt", &["3".into()], &l));
        assert!(!requirement("cores", "Gt", &["x".into()], &l));
    }
}
