//! Authentication and authorization.
//!
//! Authentication today: x509 client certificates verified by the TLS listener against the client CA
//! (CN = user, O = groups), delivered as a [`PeerIdentity`] request extension. Bearer tokens are not
//! accepted yet. Authorization today: members of `system:masters` may do everything; everyone else is
//! denied with upstream's wording. RBAC replaces [`authorize`] in a later step.

use crate::tls::PeerIdentity;

use super::error::ApiError;

/// The authenticated user of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserInfo {
    pub username: String,
    pub groups: Vec<String>,
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
    })
}

/// Allows `user` to do `attrs`, or returns 403 with the apiserver's message.
pub fn authorize(user: &UserInfo, attrs: &Attributes<'_>) -> Result<(), ApiError> {
    if user.groups.iter().any(|g| g == "system:masters") {
        return Ok(());
    }
    Err(ApiError::Forbidden(forbidden_message(user, attrs)))
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
        let err = authorize(&bob, &attrs).expect_err("bob is not a master");
        assert_eq!(
            err.to_string(),
            "configmaps is forbidden: User \"bob\" cannot list resource \"configmaps\" in API group \"\" in the namespace \"default\""
        );
    }
}
