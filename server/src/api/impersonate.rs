//! User impersonation (`kubectl --as=U --as-group=G --as-uid=I`), applied after authentication and
//! before anything is authorized, with kube-apiserver's rules.
//!
//! The headers: `Impersonate-User` (one value), `Impersonate-Group` (repeatable), `Impersonate-Uid`
//! and `Impersonate-Extra-<key>` (repeatable; the key is lower-cased and percent-decoded). Each
//! thing asked for is one authorization check of the *caller* for verb `impersonate`: `users`,
//! `groups` (core group), `serviceaccounts` in the account's namespace when the user is
//! `system:serviceaccount:<ns>:<name>`, `uids` and `userextras/<key>` (group
//! `authentication.k8s.io`), named after the value. The first denial answers 403 with upstream's
//! message; groups, uid or extras without a user answer 500 with upstream's text (kube-apiserver
//! treats that as an internal error). Invariant: without any `Impersonate-*` header the caller is
//! untouched, and with them the request never runs as the caller.
//!
//! The new user's groups: exactly the `Impersonate-Group` values, or, for a ServiceAccount with
//! none given, `system:serviceaccounts` and `system:serviceaccounts:<ns>`; then
//! `system:authenticated` is added unless `system:authenticated` or `system:unauthenticated` is
//! already there (for `system:anonymous`, `system:unauthenticated` is added instead).

use axum::http::HeaderMap;

use crate::store::Store;

use super::auth::{self, Attributes, UserInfo};
use super::error::ApiError;

const USER: &str = "impersonate-user";
const GROUP: &str = "impersonate-group";
const UID: &str = "impersonate-uid";
const EXTRA_PREFIX: &str = "impersonate-extra-";
const SA_PREFIX: &str = "system:serviceaccount:";
const AUTHENTICATED: &str = "system:authenticated";
const UNAUTHENTICATED: &str = "system:unauthenticated";
const ANONYMOUS: &str = "system:anonymous";
const AUTHN_GROUP: &str = "authentication.k8s.io";

/// One thing a request asks to impersonate, in header order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    ServiceAccount { namespace: String, name: String },
    User(String),
    Group(String),
    Extra { key: String, value: String },
    Uid(String),
}

impl Target {
    /// The authorization check the caller must pass for this target.
    fn attributes(&self) -> Attributes<'_> {
        let (group, resource, subresource, namespace, name) = match self {
            Target::ServiceAccount { namespace, name } => {
                ("", "serviceaccounts", None, Some(namespace.as_str()), name)
            }
            Target::User(name) => ("", "users", None, None, name),
            Target::Group(name) => ("", "groups", None, None, name),
            Target::Extra { key, value } => {
                (AUTHN_GROUP, "userextras", Some(key.as_str()), None, value)
            }
            Target::Uid(uid) => (AUTHN_GROUP, "uids", None, None, uid),
        };
        Attributes {
            verb: "impersonate",
            group,
            resource,
            subresource,
            namespace,
            name: Some(name.as_str()),
        }
    }

    /// The target as Go prints upstream's `ObjectReference` with `%v` (kind, namespace, name,
    /// uid, apiVersion, resourceVersion, fieldPath), for the "without a user" message.
    fn go_value(&self) -> String {
        let v1 = "authentication.k8s.io/v1";
        let fields: [&str; 7] = match self {
            Target::ServiceAccount { namespace, name } => {
                ["ServiceAccount", namespace, name, "", "", "", ""]
            }
            Target::User(name) => ["User", "", name, "", "", "", ""],
            Target::Group(name) => ["Group", "", name, "", "", "", ""],
            Target::Extra { key, value } => ["UserExtra", "", value, "", v1, "", key],
            Target::Uid(uid) => ["UID", "", uid, "", v1, "", ""],
        };
        format!("{{{}}}", fields.join(" "))
    }
}

/// Why the headers cannot be honoured before any authorization is asked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    /// Groups, uid or extras without `Impersonate-User`.
    #[error("requested [{}] without impersonating a user", .0.iter().map(Target::go_value).collect::<Vec<_>>().join(" "))]
    NoUser(Vec<Target>),
}

/// The impersonation targets of `headers` (empty when there is no `Impersonate-*` header).
pub fn targets(headers: &HeaderMap) -> Result<Vec<Target>, HeaderError> {
    let mut targets = Vec::new();
    // Like Go's Header.Get, only the first value counts; an empty one means "no user".
    let user = headers
        .get(USER)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .filter(|u| !u.is_empty());
    if let Some(user) = &user {
        targets.push(match service_account(user) {
            Some((namespace, name)) => Target::ServiceAccount { namespace, name },
            None => Target::User(user.clone()),
        });
    }
    let mut other = false;
    for group in headers.get_all(GROUP) {
        other = true;
        targets.push(Target::Group(lossy(group)));
    }
    for name in headers.keys() {
        let Some(encoded) = name.as_str().strip_prefix(EXTRA_PREFIX) else {
            continue;
        };
        other = true;
        // Header names are already lower-case here, as upstream lower-cases the key.
        let key = percent_decode(encoded);
        for value in headers.get_all(name) {
            targets.push(Target::Extra {
                key: key.clone(),
                value: lossy(value),
            });
        }
    }
    if let Some(uid) = headers.get(UID).map(lossy).filter(|u| !u.is_empty()) {
        other = true;
        targets.push(Target::Uid(uid));
    }
    if other && user.is_none() {
        return Err(HeaderError::NoUser(targets));
    }
    Ok(targets)
}

fn lossy(v: &axum::http::HeaderValue) -> String {
    String::from_utf8_lossy(v.as_bytes()).into_owned()
}

/// `(namespace, name)` of a well-formed ServiceAccount username; anything else is a plain user.
fn service_account(user: &str) -> Option<(String, String)> {
    let rest = user.strip_prefix(SA_PREFIX)?;
    let (namespace, name) = rest.split_once(':')?;
    if name.contains(':')
        || !super::validate::is_dns_label(namespace)
        || !super::validate::is_dns_subdomain(name)
    {
        return None;
    }
    Some((namespace.to_string(), name.to_string()))
}

/// `%XX` decoding as Go's `url.PathUnescape`; a malformed key is kept as sent.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let byte = b
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            let Some(byte) = byte else {
                return s.to_string();
            };
            out.push(byte);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_string())
}

/// The user a request runs as: `caller` without impersonation headers, else the impersonated
/// user once `caller` passed every check. `uri` (path and query) goes into the 500's text.
pub fn apply(
    store: &dyn Store,
    caller: UserInfo,
    headers: &HeaderMap,
    uri: &str,
) -> Result<UserInfo, ApiError> {
    let targets = targets(headers)
        .map_err(|e| ApiError::Internal(format!("Internal Server Error: \"{uri}\": {e}")))?;
    if targets.is_empty() {
        return Ok(caller);
    }
    for target in &targets {
        auth::authorize(store, &caller, &target.attributes())?;
    }
    Ok(user_of(&targets, headers.contains_key(GROUP)))
}

/// Builds the impersonated user from authorized targets.
fn user_of(targets: &[Target], groups_given: bool) -> UserInfo {
    let mut user = UserInfo::default();
    for target in targets {
        match target {
            Target::ServiceAccount { namespace, name } => {
                user.username = format!("{SA_PREFIX}{namespace}:{name}");
                if !groups_given {
                    user.groups = vec![
                        "system:serviceaccounts".to_string(),
                        format!("system:serviceaccounts:{namespace}"),
                    ];
                }
            }
            Target::User(name) => user.username = name.clone(),
            Target::Group(group) => user.groups.push(group.clone()),
            Target::Extra { key, value } => user
                .extra
                .entry(key.clone())
                .or_default()
                .push(value.clone()),
            Target::Uid(uid) => user.uid = uid.clone(),
        }
    }
    let has = |g: &str| user.groups.iter().any(|x| x == g);
    if user.username != ANONYMOUS {
        if !has(AUTHENTICATED) && !has(UNAUTHENTICATED) {
            user.groups.push(AUTHENTICATED.to_string());
        }
    } else if !has(UNAUTHENTICATED) {
        user.groups.push(UNAUTHENTICATED.to_string());
    }
    user
}

/// Drops every `Impersonate-*` header once they have been honoured, so nothing downstream
/// mistakes them for the caller's own.
pub fn strip(headers: &mut HeaderMap) {
    let names: Vec<_> = headers
        .keys()
        .filter(|n| n.as_str().starts_with("impersonate-"))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{SqliteStore, StoreOptions};
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn parses_users_groups_extras_and_uid() {
        assert_eq!(targets(&headers(&[("Accept", "x")])), Ok(vec![]));
        let t = targets(&headers(&[
            ("Impersonate-User", "alice"),
            ("Impersonate-Group", "dev"),
            ("Impersonate-Group", "ops"),
            ("Impersonate-Extra-Acme.com%2Fproject", "p1"),
            ("Impersonate-Extra-Acme.com%2Fproject", "p2"),
            ("Impersonate-Extra-Bad%zz", "v"),
            ("Impersonate-Uid", "1234"),
        ]))
        .expect("valid");
        assert_eq!(
            t,
            vec![
                Target::User("alice".into()),
                Target::Group("dev".into()),
                Target::Group("ops".into()),
                Target::Extra {
                    key: "acme.com/project".into(),
                    value: "p1".into()
                },
                Target::Extra {
                    key: "acme.com/project".into(),
                    value: "p2".into()
                },
                Target::Extra {
                    key: "bad%zz".into(),
                    value: "v".into()
                },
                Target::Uid("1234".into()),
            ]
        );
    }

    #[test]
    fn service_account_users_are_recognised_only_when_well_formed() {
        let one = |u: &str| targets(&headers(&[("Impersonate-User", u)])).expect("valid");
        assert_eq!(
            one("system:serviceaccount:default:sa1"),
            vec![Target::ServiceAccount {
                namespace: "default".into(),
                name: "sa1".into()
            }]
        );
        for plain in [
            "system:serviceaccount:default",
            "system:serviceaccount:a:b:c",
            "system:serviceaccount:Bad:sa",
        ] {
            assert_eq!(one(plain), vec![Target::User(plain.into())], "{plain}");
        }
    }

    #[test]
    fn groups_extras_or_uid_without_a_user_are_refused_with_upstreams_text() {
        let err =
            targets(&headers(&[("Impersonate-Group", "system:masters")])).expect_err("no user");
        assert_eq!(
            err.to_string(),
            "requested [{Group  system:masters    }] without impersonating a user"
        );
        let err = targets(&headers(&[
            ("Impersonate-Uid", "u1"),
            ("Impersonate-User", ""),
        ]))
        .expect_err("empty user");
        assert_eq!(
            err.to_string(),
            "requested [{UID  u1  authentication.k8s.io/v1  }] without impersonating a user"
        );
        let err = targets(&headers(&[("Impersonate-Extra-Scopes", "view")])).expect_err("extra");
        assert_eq!(
            err.to_string(),
            "requested [{UserExtra  view  authentication.k8s.io/v1  scopes}] without impersonating a user"
        );
    }

    #[test]
    fn checks_use_the_impersonate_verb_on_upstreams_resources() {
        let extra = Target::Extra {
            key: "scopes".into(),
            value: "view".into(),
        };
        let a = extra.attributes();
        assert_eq!(
            (a.verb, a.group, a.resource, a.subresource, a.name),
            (
                "impersonate",
                "authentication.k8s.io",
                "userextras",
                Some("scopes"),
                Some("view")
            )
        );
        let sa = Target::ServiceAccount {
            namespace: "ns".into(),
            name: "sa".into(),
        };
        let a = sa.attributes();
        assert_eq!(
            (a.group, a.resource, a.namespace, a.name),
            ("", "serviceaccounts", Some("ns"), Some("sa"))
        );
        let uid = Target::Uid("u".into());
        let a = uid.attributes();
        assert_eq!((a.group, a.resource), ("authentication.k8s.io", "uids"));
    }

    #[test]
    fn impersonated_groups_follow_upstreams_rules() {
        let user = user_of(&[Target::User("alice".into())], false);
        assert_eq!(user.groups, vec!["system:authenticated"]);
        let sa = user_of(
            &[Target::ServiceAccount {
                namespace: "default".into(),
                name: "sa1".into(),
            }],
            false,
        );
        assert_eq!(sa.username, "system:serviceaccount:default:sa1");
        assert_eq!(
            sa.groups,
            vec![
                "system:serviceaccounts",
                "system:serviceaccounts:default",
                "system:authenticated"
            ]
        );
        let sa_with_group = user_of(
            &[
                Target::ServiceAccount {
                    namespace: "default".into(),
                    name: "sa1".into(),
                },
                Target::Group("dev".into()),
            ],
            true,
        );
        assert_eq!(sa_with_group.groups, vec!["dev", "system:authenticated"]);
        let unauth = user_of(
            &[
                Target::User("bob".into()),
                Target::Group(UNAUTHENTICATED.into()),
            ],
            true,
        );
        assert_eq!(unauth.groups, vec![UNAUTHENTICATED]);
        let anon = user_of(&[Target::User(ANONYMOUS.into())], false);
        assert_eq!(anon.groups, vec![UNAUTHENTICATED]);
    }

    #[test]
    fn the_caller_must_be_allowed_each_target() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            SqliteStore::open(dir.path().join("state.db"), StoreOptions::default()).expect("store");
        let bob = UserInfo {
            username: "bob".into(),
            groups: vec![AUTHENTICATED.into()],
            ..Default::default()
        };
        let h = headers(&[("Impersonate-User", "alice")]);
        let err = apply(&store, bob.clone(), &h, "/api/v1/pods").expect_err("denied");
        assert_eq!(
            err.to_string(),
            "users \"alice\" is forbidden: User \"bob\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"
        );
        let admin = UserInfo {
            username: "system:admin".into(),
            groups: vec!["system:masters".into()],
            ..Default::default()
        };
        let alice = apply(&store, admin.clone(), &h, "/api/v1/pods").expect("allowed");
        assert_eq!(alice.username, "alice");
        assert_eq!(alice.groups, vec![AUTHENTICATED]);
        let same = apply(&store, admin.clone(), &HeaderMap::new(), "/").expect("untouched");
        assert_eq!(same, admin);
        let err = apply(
            &store,
            admin,
            &headers(&[("Impersonate-Group", "g")]),
            "/api/v1/pods?limit=1",
        )
        .expect_err("no user");
        assert_eq!(
            err.to_string(),
            "Internal Server Error: \"/api/v1/pods?limit=1\": requested [{Group  g    }] without impersonating a user"
        );
    }

    #[test]
    fn strip_removes_only_impersonation_headers() {
        let mut h = headers(&[
            ("Impersonate-User", "a"),
            ("Impersonate-Extra-X", "1"),
            ("Accept", "json"),
        ]);
        strip(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("accept"));
    }
}
