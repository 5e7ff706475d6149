//! Resolution of a resource URL into what it names, following the apiserver's rules:
//! `[namespaces/<ns>/]<resource>[/<name>[/<subresource>]]`, where `namespaces/<name>/status` and
//! `namespaces/<name>/finalize` address the namespace itself.

use super::error::ApiError;
use super::registry::{self, Resource};

/// What a resource URL names.
#[derive(Clone, Debug)]
pub struct Target {
    pub resource: &'static Resource,
    /// The namespace from the URL (`None` for cluster-scoped resources and all-namespace lists).
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// Parses the segments after `/api/<version>` or `/apis/<group>/<version>`.
pub fn parse(
    custom: &[&'static Resource],
    group: &str,
    version: &str,
    segments: &[&str],
) -> Result<Target, ApiError> {
    let mut parts = segments;
    let mut namespace = None;
    if parts.first() == Some(&"namespaces") && parts.len() > 1 {
        // `namespaces/<ns>/<resource>...` unless the third part is a namespace subresource.
        if parts.len() > 2 && !matches!(parts[2], "status" | "finalize") {
            namespace = Some(parts[1].to_string());
            parts = &parts[2..];
        }
    }
    let (plural, rest) = parts.split_first().ok_or(ApiError::NoRoute)?;
    let resource = registry::find_any(custom, group, version, plural).ok_or(ApiError::NoRoute)?;
    if resource.namespaced != namespace.is_some() && !(resource.namespaced && rest.is_empty()) {
        // A namespaced object addressed without its namespace, or a cluster-scoped one with one.
        return Err(ApiError::NoRoute);
    }
    let (name, subresource) = match rest {
        [] => (None, None),
        [name] => (Some(name.to_string()), None),
        [name, sub] if resource.has_subresource(sub) => {
            (Some(name.to_string()), Some(sub.to_string()))
        }
        _ => return Err(ApiError::NoRoute),
    };
    if name.as_deref() == Some("") {
        return Err(ApiError::NoRoute);
    }
    Ok(Target {
        resource,
        namespace,
        name,
        subresource,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    type Parsed = (String, Option<String>, Option<String>, Option<String>);

    fn t(group: &str, path: &str) -> Option<Parsed> {
        let segs: Vec<&str> = path.split('/').collect();
        parse(&[], group, "v1", &segs).ok().map(|t| {
            (
                t.resource.plural.to_string(),
                t.namespace,
                t.name,
                t.subresource,
            )
        })
    }

    #[test]
    fn resolves_like_the_apiserver() {
        let s = |x: &str| Some(x.to_string());
        assert_eq!(
            t("", "namespaces/default/pods"),
            Some(("pods".into(), s("default"), None, None))
        );
        assert_eq!(t("", "pods"), Some(("pods".into(), None, None, None)));
        assert_eq!(
            t("", "namespaces/foo"),
            Some(("namespaces".into(), None, s("foo"), None))
        );
        assert_eq!(
            t("", "namespaces/foo/status"),
            Some(("namespaces".into(), None, s("foo"), s("status")))
        );
        assert_eq!(
            t("", "nodes/n1"),
            Some(("nodes".into(), None, s("n1"), None))
        );
        assert_eq!(
            t("apps", "namespaces/a/deployments/web/status"),
            Some(("deployments".into(), s("a"), s("web"), s("status")))
        );
        assert_eq!(
            t("", "pods/x"),
            None,
            "namespaced object needs its namespace"
        );
        assert_eq!(t("", "namespaces/a/nodes/n1"), None);
        assert_eq!(t("", "namespaces/a/configmaps/x/nope"), None);
        assert_eq!(t("", "widgets"), None);
    }
}
