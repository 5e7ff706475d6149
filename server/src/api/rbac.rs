//! The RBAC authorizer: Roles, ClusterRoles, RoleBindings and ClusterRoleBindings
//! (`rbac.authorization.k8s.io/v1`), stored like any other object and read from the store on every
//! decision (the store serves reads from memory).
//!
//! A request is allowed when some binding names the user (User), one of its groups (Group) or its
//! ServiceAccount, and the referenced role has a rule matching the verb, API group, resource
//! (`resource/subresource` for subresources) and, when the rule lists any, the object's name.
//! ClusterRoleBindings apply everywhere; RoleBindings only in their namespace. There are no deny
//! rules, so the order of bindings does not matter.

use serde_json::Value;

use super::auth::{Attributes, UserInfo};
use super::error::ApiError;
use super::{object, registry};
use crate::store::{ListOptions, Store};

pub const GROUP: &str = "rbac.authorization.k8s.io";

fn resource(plural: &str) -> Result<&'static registry::Resource, ApiError> {
    registry::find(GROUP, "v1", plural)
        .ok_or_else(|| ApiError::Internal(format!("{plural}.{GROUP} are not registered")))
}

fn list(store: &dyn Store, plural: &str, namespace: Option<&str>) -> Result<Vec<Value>, ApiError> {
    let res = resource(plural)?;
    let page = store
        .list(&res.list_prefix(namespace), &ListOptions::default())
        .map_err(|e| ApiError::from_store(e, &res.name(), ""))?;
    page.items.iter().map(object::from_store).collect()
}

fn get(
    store: &dyn Store,
    plural: &str,
    namespace: Option<&str>,
    name: &str,
) -> Result<Option<Value>, ApiError> {
    let res = resource(plural)?;
    let kv = store
        .get(&res.key(namespace, name))
        .map_err(|e| ApiError::from_store(e, &res.name(), name))?;
    kv.as_ref().map(object::from_store).transpose()
}

/// True if RBAC grants `attrs` to `user`.
pub fn allows(
    store: &dyn Store,
    user: &UserInfo,
    attrs: &Attributes<'_>,
) -> Result<bool, ApiError> {
    Ok(allowed_by(store, user, attrs)?.is_some())
}

/// Why RBAC grants `attrs` to `user`, in upstream's words (`RBAC: allowed by ClusterRoleBinding
/// "b" of ClusterRole "r" to User "u"`), or `None`.
pub fn allowed_by(
    store: &dyn Store,
    user: &UserInfo,
    attrs: &Attributes<'_>,
) -> Result<Option<String>, ApiError> {
    granted_by(store, user, attrs.namespace, |rule| {
        rule_matches(rule, attrs)
    })
}

/// Why RBAC grants `verb` on the non-resource URL `path` (`/healthz`, `/logs/*`), or `None`.
pub fn non_resource_allowed_by(
    store: &dyn Store,
    user: &UserInfo,
    verb: &str,
    path: &str,
) -> Result<Option<String>, ApiError> {
    granted_by(store, user, None, |rule| {
        has(&rule["verbs"], verb)
            && rule["nonResourceURLs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .any(|url| match url.strip_suffix('*') {
                    Some(prefix) => path.starts_with(prefix),
                    None => url == path,
                })
    })
}

/// The first binding of `user` whose role has a rule `matches` accepts, described.
fn granted_by(
    store: &dyn Store,
    user: &UserInfo,
    namespace: Option<&str>,
    matches: impl Fn(&Value) -> bool,
) -> Result<Option<String>, ApiError> {
    let mut bindings: Vec<(Value, Option<&str>)> = list(store, "clusterrolebindings", None)?
        .into_iter()
        .map(|b| (b, None))
        .collect();
    if let Some(ns) = namespace {
        bindings.extend(
            list(store, "rolebindings", Some(ns))?
                .into_iter()
                .map(|b| (b, Some(ns))),
        );
    }
    for (binding, ns) in &bindings {
        let Some(subject) = bound_subject(binding, user, *ns) else {
            continue;
        };
        let Some(role) = role_of(store, binding, *ns)? else {
            continue;
        };
        if role["rules"].as_array().into_iter().flatten().any(&matches) {
            let name = object::name(binding);
            let binding_text = match ns {
                Some(ns) => format!("RoleBinding \"{name}/{ns}\""),
                None => format!("ClusterRoleBinding \"{name}\""),
            };
            return Ok(Some(format!(
                "RBAC: allowed by {binding_text} of {} \"{}\" to {subject}",
                binding["roleRef"]["kind"].as_str().unwrap_or(""),
                binding["roleRef"]["name"].as_str().unwrap_or(""),
            )));
        }
    }
    Ok(None)
}

/// Every rule granted to `user` cluster-wide and, with `namespace`, in that namespace.
pub fn rules_for(
    store: &dyn Store,
    user: &UserInfo,
    namespace: Option<&str>,
) -> Result<Vec<Value>, ApiError> {
    let mut bindings: Vec<(Value, Option<&str>)> = list(store, "clusterrolebindings", None)?
        .into_iter()
        .map(|b| (b, None))
        .collect();
    if let Some(ns) = namespace {
        bindings.extend(
            list(store, "rolebindings", Some(ns))?
                .into_iter()
                .map(|b| (b, Some(ns))),
        );
    }
    let mut rules = Vec::new();
    for (binding, ns) in bindings.iter().filter(|(b, ns)| binds(b, user, *ns)) {
        if let Some(role) = role_of(store, binding, *ns)? {
            rules.extend(role["rules"].as_array().into_iter().flatten().cloned());
        }
    }
    Ok(rules)
}

/// True if one of the binding's subjects is the user, one of its groups, or its ServiceAccount.
fn binds(binding: &Value, user: &UserInfo, binding_ns: Option<&str>) -> bool {
    bound_subject(binding, user, binding_ns).is_some()
}

/// The subject of the binding that names the user, described as upstream (`User "bob"`,
/// `Group "devs"`, `ServiceAccount "robot/apps"`).
fn bound_subject(binding: &Value, user: &UserInfo, binding_ns: Option<&str>) -> Option<String> {
    binding["subjects"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|s| {
            let name = s["name"].as_str().unwrap_or("");
            match s["kind"].as_str() {
                Some("User") if name == user.username => Some(format!("User \"{name}\"")),
                Some("Group") if user.groups.iter().any(|g| g == name) => {
                    Some(format!("Group \"{name}\""))
                }
                Some("ServiceAccount") => {
                    let ns = s["namespace"]
                        .as_str()
                        .filter(|n| !n.is_empty())
                        .or(binding_ns)?;
                    (user.username == format!("system:serviceaccount:{ns}:{name}"))
                        .then(|| format!("ServiceAccount \"{name}/{ns}\""))
                }
                _ => None,
            }
        })
}

/// The Role or ClusterRole a binding refers to, if it exists.
fn role_of(
    store: &dyn Store,
    binding: &Value,
    binding_ns: Option<&str>,
) -> Result<Option<Value>, ApiError> {
    let role_ref = &binding["roleRef"];
    let name = role_ref["name"].as_str().unwrap_or("");
    match (role_ref["kind"].as_str(), binding_ns) {
        (Some("ClusterRole"), _) => get(store, "clusterroles", None, name),
        (Some("Role"), Some(ns)) => get(store, "roles", Some(ns), name),
        _ => Ok(None),
    }
}

fn has(list: &Value, want: &str) -> bool {
    list.as_array()
        .into_iter()
        .flatten()
        .any(|v| v.as_str().is_some_and(|v| v == "*" || v == want))
}

/// True if one PolicyRule covers the request.
pub fn rule_matches(rule: &Value, a: &Attributes<'_>) -> bool {
    let resource_ok = match a.subresource {
        Some(sub) => {
            let full = format!("{}/{sub}", a.resource);
            let any_sub = format!("*/{sub}");
            rule["resources"].as_array().into_iter().flatten().any(|r| {
                r.as_str()
                    .is_some_and(|r| r == "*" || r == full || r == any_sub)
            })
        }
        None => has(&rule["resources"], a.resource),
    };
    let names = rule["resourceNames"].as_array().filter(|n| !n.is_empty());
    let name_ok = match names {
        None => true,
        Some(names) => a
            .name
            .is_some_and(|n| names.iter().any(|x| x.as_str() == Some(n))),
    };
    has(&rule["verbs"], a.verb) && has(&rule["apiGroups"], a.group) && resource_ok && name_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn attrs<'a>(
        verb: &'a str,
        resource: &'a str,
        sub: Option<&'a str>,
        name: Option<&'a str>,
    ) -> Attributes<'a> {
        Attributes {
            verb,
            group: "",
            resource,
            subresource: sub,
            namespace: Some("default"),
            name,
        }
    }

    #[test]
    fn rules_match_verbs_groups_resources_and_names() {
        let rule = json!({"verbs":["get","list"],"apiGroups":[""],"resources":["pods","pods/log"]});
        assert!(rule_matches(&rule, &attrs("get", "pods", None, Some("p"))));
        assert!(rule_matches(
            &rule,
            &attrs("get", "pods", Some("log"), Some("p"))
        ));
        assert!(!rule_matches(
            &rule,
            &attrs("get", "pods", Some("exec"), Some("p"))
        ));
        assert!(!rule_matches(
            &rule,
            &attrs("delete", "pods", None, Some("p"))
        ));
        let named = json!({"verbs":["*"],"apiGroups":["*"],"resources":["configmaps"],"resourceNames":["only"]});
        assert!(rule_matches(
            &named,
            &attrs("update", "configmaps", None, Some("only"))
        ));
        assert!(!rule_matches(
            &named,
            &attrs("update", "configmaps", None, Some("other"))
        ));
        assert!(!rule_matches(
            &named,
            &attrs("list", "configmaps", None, None)
        ));
    }

    #[test]
    fn subjects_match_users_groups_and_service_accounts() {
        let binding = json!({"subjects":[{"kind":"User","name":"bob"},{"kind":"Group","name":"devs"},
                                         {"kind":"ServiceAccount","name":"robot"}]});
        let user = |name: &str, groups: &[&str]| UserInfo {
            username: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..Default::default()
        };
        assert!(binds(&binding, &user("bob", &[]), None));
        assert!(binds(&binding, &user("alice", &["devs"]), None));
        assert!(binds(
            &binding,
            &user("system:serviceaccount:apps:robot", &[]),
            Some("apps")
        ));
        assert!(!binds(
            &binding,
            &user("system:serviceaccount:other:robot", &[]),
            Some("apps")
        ));
        assert!(!binds(&binding, &user("eve", &["ops"]), None));
    }
}
