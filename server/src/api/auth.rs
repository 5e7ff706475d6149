//! Authentication and authorization.
//!
//! Authentication: x509 client certificates verified by the TLS listener against the client CA
//! (CN = user, O = groups), delivered as a [`PeerIdentity`] request extension, else ServiceAccount
//! bearer tokens ([`super::tokens`]), else bootstrap tokens (`<id>.<secret>`, user
//! `system:bootstrap:<id>`, group `system:bootstrappers`, until they expire; see
//! [`crate::join::bootstrap`]). Authorization: members of `system:masters` may do everything, every
//! authenticated user may create self reviews (`auth can-i`, `auth whoami`), node identities are
//! decided by the node authorizer ([`super::rbac_node`]) first, everything else by RBAC
//! ([`super::rbac`]), and denials carry upstream's wording. Between the two, `Impersonate-*`
//! headers may replace the user ([`super::impersonate`]).

use crate::store::Store;
use crate::tls::PeerIdentity;

use super::error::ApiError;
use super::rbac_node::Decision;

/// The authenticated user of a request (after impersonation, the impersonated one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserInfo {
    pub username: String,
    pub groups: Vec<String>,
    /// The ServiceAccount's uid for a ServiceAccount token; else empty unless an impersonating
    /// request set `Impersonate-Uid`.
    pub uid: String,
    /// Extra attributes (`Impersonate-Extra-<key>`; for ServiceAccount tokens upstream's
    /// `authentication.kubernetes.io/*`: bound pod and node, credential id), keys lower-case.
    pub extra: std::collections::BTreeMap<String, Vec<String>>,
}

/// What a request wants to do, in the terms authorization and its messages use.
#[derive(Clone, Debug)]
pub struct Attributes<'a> {
    pub verb: &'a str,
    pub group: &'a str,
    pub resource: &'a str,
    pub subresource: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
}

/// The user of a request, or 401.
pub fn authenticate(identity: Option<&PeerIdentity>) -> Result<UserInfo, ApiError> {
    let identity = identity.ok_or(ApiError::Unauthorized)?;
    let mut groups = identity.organizations.clone();
    groups.push("system:authenticated".to_string());
    Ok(UserInfo {
        username: identity.common_name.clone(),
        groups,
        ..Default::default()
    })
}

/// True for members of `system:masters`, who may do everything.
pub fn is_master(user: &UserInfo) -> bool {
    user.groups.iter().any(|g| g == "system:masters")
}

/// The ServiceAccount behind an `Authorization: Bearer` token, or 401. The token must verify and
/// its ServiceAccount must still exist with the uid the token was issued for.
pub fn bearer(
    state: &super::ApiState,
    headers: &axum::http::HeaderMap,
) -> Result<UserInfo, ApiError> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .ok_or(ApiError::Unauthorized)?;
    token_user(state, token, super::tokens::API_AUDIENCES).map(|(user, _)| user)
}

/// The token of an `Authorization` header value: the scheme `Bearer` in any case (the Python
/// client's in-cluster config sends `bearer`), as upstream's authenticator accepts it.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(' '))
        .then_some(token)
}

/// The user a bearer token authenticates for one of `audiences` (ServiceAccount tokens), with
/// the uid of its ServiceAccount (empty for bootstrap tokens), or 401. TokenReviews and every
/// bearer request decide the same way.
pub fn token_user(
    state: &super::ApiState,
    token: &str,
    audiences: &[&str],
) -> Result<(UserInfo, String), ApiError> {
    if r3s_agent::join::token::is_bootstrap_token(token) {
        let id = crate::join::bootstrap::valid(state.store.as_ref(), token)
            .ok_or(ApiError::Unauthorized)?;
        let user = UserInfo {
            username: format!("system:bootstrap:{id}"),
            groups: vec![
                "system:bootstrappers".to_string(),
                "system:authenticated".to_string(),
            ],
            ..Default::default()
        };
        return Ok((user, String::new()));
    }
    let issuer = state.tokens.as_ref().ok_or(ApiError::Unauthorized)?;
    let verified = issuer
        .verify_claims(token, audiences)
        .ok_or(ApiError::Unauthorized)?;
    let subject = &verified.subject;
    let accounts = super::registry::find("", "v1", "serviceaccounts")
        .ok_or_else(|| ApiError::Internal("serviceaccounts are not registered".into()))?;
    let key = accounts.key(Some(&subject.namespace), &subject.name);
    let current = state
        .store
        .get(&key)
        .map_err(|e| ApiError::from_store(e, &accounts.name(), &subject.name))?
        .map(|kv| super::object::from_store(&kv))
        .transpose()?;
    let uid_matches =
        current.is_some_and(|sa| sa["metadata"]["uid"].as_str() == Some(subject.uid.as_str()));
    if !uid_matches {
        return Err(ApiError::Unauthorized);
    }
    if let Some(pod) = &verified.bound.pod
        && !bound_pod_alive(state.store.as_ref(), &subject.namespace, pod)?
    {
        tracing::debug!(pod = %pod.name, namespace = %subject.namespace, "service account token has been invalidated");
        return Err(ApiError::Unauthorized);
    }
    let mut extra = std::collections::BTreeMap::new();
    if let Some(pod) = &verified.bound.pod {
        extra.insert(format!("{EXTRA_PREFIX}pod-name"), vec![pod.name.clone()]);
        extra.insert(format!("{EXTRA_PREFIX}pod-uid"), vec![pod.uid.clone()]);
    }
    if let Some(node) = &verified.bound.node {
        extra.insert(format!("{EXTRA_PREFIX}node-name"), vec![node.name.clone()]);
        extra.insert(format!("{EXTRA_PREFIX}node-uid"), vec![node.uid.clone()]);
    }
    if let Some(jti) = &verified.jti {
        extra.insert(
            format!("{EXTRA_PREFIX}credential-id"),
            vec![format!("JTI={jti}")],
        );
    }
    let user = UserInfo {
        username: format!(
            "system:serviceaccount:{}:{}",
            subject.namespace, subject.name
        ),
        groups: vec![
            "system:serviceaccounts".to_string(),
            format!("system:serviceaccounts:{}", subject.namespace),
            "system:authenticated".to_string(),
        ],
        uid: subject.uid.clone(),
        extra,
    };
    Ok((user, subject.uid.clone()))
}

/// The prefix of upstream's user extras for ServiceAccount tokens.
const EXTRA_PREFIX: &str = "authentication.kubernetes.io/";

/// How long a pod being deleted still validates the tokens bound to it (upstream's JWT leeway):
/// its containers may still call the API during their grace period.
const DELETION_LEEWAY_SECONDS: i64 = 60;

/// Whether the pod a token is bound to still exists with the token's uid and was not marked for
/// deletion more than [`DELETION_LEEWAY_SECONDS`] ago (upstream's bound-token validation).
fn bound_pod_alive(
    store: &dyn Store,
    namespace: &str,
    pod: &super::tokens::ObjectRef,
) -> Result<bool, ApiError> {
    let pods = super::registry::find("", "v1", "pods")
        .ok_or_else(|| ApiError::Internal("pods are not registered".into()))?;
    let Some(kv) = store
        .get(&pods.key(Some(namespace), &pod.name))
        .map_err(|e| ApiError::from_store(e, &pods.name(), &pod.name))?
    else {
        return Ok(false);
    };
    let current = super::object::from_store(&kv)?;
    if current["metadata"]["uid"].as_str() != Some(pod.uid.as_str()) {
        return Ok(false);
    }
    let deleted_long_ago = current["metadata"]["deletionTimestamp"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .is_some_and(|t| t.timestamp() < chrono::Utc::now().timestamp() - DELETION_LEEWAY_SECONDS);
    Ok(!deleted_long_ago)
}

/// Allows `user` to do `attrs`, or returns 403 with the apiserver's message.
pub fn authorize(
    store: &dyn Store,
    user: &UserInfo,
    attrs: &Attributes<'_>,
) -> Result<(), ApiError> {
    match explain(store, user, attrs)? {
        Verdict::Allowed(_) => Ok(()),
        Verdict::Denied { message, .. } => Err(ApiError::Forbidden(message)),
    }
}

/// The outcome of authorization, with the reasons an access review reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed; the reason (`RBAC: allowed by ...`, empty for masters).
    Allowed(String),
    /// Denied: the 403 message, and the authorizers' own reason (empty when none had an opinion).
    Denied { message: String, reason: String },
}

/// Decides `attrs` for `user`: masters and self reviews, the node authorizer, then RBAC.
pub fn explain(
    store: &dyn Store,
    user: &UserInfo,
    attrs: &Attributes<'_>,
) -> Result<Verdict, ApiError> {
    // Masters and self reviews never depend on stored policy, so a damaged RBAC setup can
    // always be repaired with the admin kubeconfig.
    if is_master(user) {
        return Ok(Verdict::Allowed(String::new()));
    }
    if self_review(attrs) {
        return Ok(Verdict::Allowed(
            "RBAC: allowed by ClusterRoleBinding \"system:basic-user\" of ClusterRole \"system:basic-user\" to Group \"system:authenticated\"".into(),
        ));
    }
    let reason = match super::rbac_node::decide(store, user, attrs)? {
        Decision::Allow => return Ok(Verdict::Allowed(String::new())),
        Decision::Deny(message) => {
            return Ok(Verdict::Denied {
                reason: message.clone(),
                message,
            });
        }
        Decision::NoOpinion(reason) => reason,
    };
    if let Some(why) = super::rbac::allowed_by(store, user, attrs)? {
        return Ok(Verdict::Allowed(why));
    }
    let mut message = forbidden_message(user, attrs);
    if let Some(reason) = &reason {
        message = format!("{message}: {reason}");
    }
    Ok(Verdict::Denied {
        message,
        reason: reason.unwrap_or_default(),
    })
}

/// Every authenticated user may ask about themselves (upstream's `system:basic-user` role).
fn self_review(a: &Attributes<'_>) -> bool {
    a.verb == "create"
        && matches!(
            (a.group, a.resource),
            (
                "authorization.k8s.io",
                "selfsubjectaccessreviews" | "selfsubjectrulesreviews"
            ) | ("authentication.k8s.io", "selfsubjectreviews")
        )
}

fn forbidden_message(user: &UserInfo, a: &Attributes<'_>) -> String {
    let qualified = if a.group.is_empty() {
        a.resource.to_string()
    } else {
        format!("{}.{}", a.resource, a.group)
    };
    let subject = match a.name {
        Some(name) => format!("{qualified} \"{name}\""),
        None => qualified,
    };
    let resource = match a.subresource {
        Some(sub) => format!("{}/{sub}", a.resource),
        None => a.resource.to_string(),
    };
    let scope = match a.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_string(),
    };
    format!(
        "{subject} is forbidden: User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}",
        user.username, a.verb, a.group
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc.def.ghi"), Some("abc.def.ghi"));
        assert_eq!(bearer_token("bearer abc.def.ghi"), Some("abc.def.ghi"));
        assert_eq!(bearer_token("BEARER  abc "), Some("abc"));
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer a b"), None);
        assert_eq!(bearer_token("Bearerabc"), None);
    }

    #[test]
    fn denial_uses_upstream_wording() {
        let bob = authenticate(Some(&PeerIdentity {
            common_name: "bob".into(),
            organizations: vec!["dev".into()],
        }))
        .expect("identity");
        let attrs = Attributes {
            verb: "list",
            group: "",
            resource: "configmaps",
            subresource: None,
            namespace: Some("default"),
            name: None,
        };
        assert!(!is_master(&bob));
        assert_eq!(
            forbidden_message(&bob, &attrs),
            "configmaps is forbidden: User \"bob\" cannot list resource \"configmaps\" in API group \"\" in the namespace \"default\""
        );
    }
}
