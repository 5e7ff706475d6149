//! `create`, `update` (PUT) and `patch`: decode → default → validate → admit → store → encode.
//!
//! Every write is a compare-and-swap on the key's revision. A PUT whose body carries a
//! resourceVersion is conditional on it (stale → 409 Conflict); an empty one is unconditional and a
//! patch without one is too: those re-read and retry when a concurrent write wins the race.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::Value;

use super::Ctx;
use super::read::load;
use crate::api::apply::{self, Manager, fieldset::Shape};
use crate::api::auth::UserInfo;
use crate::api::codec;
use crate::api::defaults;
use crate::api::error::ApiError;
use crate::api::limitrange;
use crate::api::patch;
use crate::api::podsub;
use crate::api::priority;
use crate::api::quota;
use crate::api::rbac_node;
use crate::api::registry::Review;
use crate::api::scale;
use crate::api::serviceaccount;
use crate::api::services;
use crate::api::tokens;
use crate::api::validate;
use crate::api::{lifecycle, object, registry};
use crate::store::{Revision, StoreError};

/// How often an unconditional update is retried after losing a race.
const UNCONDITIONAL_RETRIES: usize = 5;

pub async fn create(ctx: &Ctx, user: &UserInfo) -> Result<Response, ApiError> {
    let res = ctx.target.resource;
    let mut obj = codec::decode(&ctx.headers, &ctx.body)?;
    object::check_type_and_namespace(res, &mut obj, ctx.namespace())?;
    ctx.check_fields(&mut obj)?;
    let who = manager(ctx)?;
    create_object(ctx, user, obj, |obj| apply::record_update(None, obj, &who)).await
}

/// Creates `obj` (type and namespace checked): server fields, defaults, `track` (managed fields),
/// validation, admission (NodeRestriction, namespace, service addresses), store.
async fn create_object(
    ctx: &Ctx,
    user: &UserInfo,
    mut obj: Value,
    track: impl FnOnce(&mut Value),
) -> Result<Response, ApiError> {
    let res = ctx.target.resource;
    object::prepare_create(res, &mut obj)?;
    rbac_node::check_create(user, res.group, res.plural, &obj)?;
    validate::default_on_create(res, &mut obj);
    validate::schema_defaults(res, &mut obj);
    track(&mut obj);
    admit_namespace(ctx)?;
    let state = &ctx.state;
    limitrange::admit(state.store.as_ref(), res, ctx.namespace(), &mut obj)?;
    priority::admit(state.store.as_ref(), res, None, &mut obj)?;
    serviceaccount::admit(state, res, ctx.namespace(), &mut obj).await?;
    crate::api::storageclass::admit(state.store.as_ref(), res, &mut obj)?;
    validate::validate(res, &obj, None)?;
    let _allocation =
        services::admit(&state.services, state.store.as_ref(), res, None, &mut obj).await?;
    let _quota = quota::admit(state.store.as_ref(), res, ctx.namespace(), &obj).await?;
    let name = object::name(&obj).to_string();
    if ctx.dry_run() {
        return Ok(codec::respond(StatusCode::CREATED, &obj));
    }
    let kv = ctx
        .state
        .store
        .create(&res.key(ctx.namespace(), &name), object::to_store(&obj)?)
        .await
        .map_err(|e| ApiError::from_store(e, &res.name(), &name))?;
    object::set_resource_version(&mut obj, kv.mod_revision);
    Ok(codec::respond(StatusCode::CREATED, &obj))
}

/// A review kind: computed from the user and the body, answered 201, never stored.
pub fn review(ctx: &Ctx, user: &UserInfo, review: Review) -> Result<Response, ApiError> {
    let res = ctx.target.resource;
    let mut obj = codec::decode(&ctx.headers, &ctx.body)?;
    object::check_type_and_namespace(res, &mut obj, ctx.namespace())?;
    let answer = review(&ctx.state, user, ctx.namespace(), obj)?;
    Ok(codec::respond(StatusCode::CREATED, &answer))
}

/// Namespaced objects can only be created in a namespace that exists and is not terminating.
fn admit_namespace(ctx: &Ctx) -> Result<(), ApiError> {
    let Some(ns) = ctx.namespace() else {
        return Ok(());
    };
    let namespaces = registry::find("", "v1", "namespaces")
        .ok_or_else(|| ApiError::Internal("namespaces are not registered".into()))?;
    let kv = ctx
        .state
        .store
        .get(&namespaces.key(None, ns))
        .map_err(|e| ApiError::from_store(e, &namespaces.name(), ns))?
        .ok_or_else(|| ApiError::NotFound {
            resource: namespaces.name(),
            name: ns.to_string(),
        })?;
    let namespace = object::from_store(&kv)?;
    if namespace["metadata"]["deletionTimestamp"].is_string() {
        return Err(ApiError::Forbidden(format!(
            "{} \"{}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
            ctx.target.resource.name(),
            ctx.name()
        )));
    }
    Ok(())
}

pub async fn update(ctx: &Ctx) -> Result<Response, ApiError> {
    let res = ctx.target.resource;
    let mut body = codec::decode(&ctx.headers, &ctx.body)?;
    if !is_scale(ctx) {
        object::check_type_and_namespace(res, &mut body, ctx.namespace())?;
    }
    if object::name(&body) != ctx.name() {
        return Err(ApiError::BadRequest(format!(
            "the name of the object ({}) does not match the name on the URL ({})",
            object::name(&body),
            ctx.name()
        )));
    }
    let precondition = object::resource_version(&body)?;
    let track = Track::Update(manager(ctx)?);
    if !is_scale(ctx) {
        ctx.check_fields(&mut body)?;
    }
    if is_scale(ctx) {
        return replace(ctx, precondition, track, |current| {
            scale::apply_to(ctx.target.resource, current, &body)
        })
        .await;
    }
    replace(ctx, precondition, track, |_current| Ok(body.clone())).await
}

/// The manager of a write: `fieldManager`, else the product name of the User-Agent (as upstream).
fn manager(ctx: &Ctx) -> Result<Manager, ApiError> {
    let name = match ctx.param("fieldManager") {
        Some(name) if !name.is_empty() => name.to_string(),
        _ => ctx
            .headers
            .get(axum::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .and_then(|ua| ua.split('/').next())
            .filter(|product| !product.is_empty())
            .unwrap_or("unknown")
            .chars()
            .take(128)
            .collect(),
    };
    if name.chars().count() > 128 || name.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(format!(
            "invalid fieldManager {name:?}: must be at most 128 printable characters"
        )));
    }
    let res = ctx.target.resource;
    Ok(Manager {
        name,
        api_version: res.api_version(),
        subresource: ctx.target.subresource.clone().unwrap_or_default(),
        shape: Shape {
            builtin: registry::find(res.group, res.version, res.plural).is_some(),
        },
    })
}

/// How a write records its managed fields.
enum Track {
    /// An update by this manager: it owns what it changed.
    Update(Manager),
    /// The computed object already carries its managed fields (server-side apply).
    Done,
    /// Action subresources (binding) leave managed fields alone.
    None,
}

fn is_scale(ctx: &Ctx) -> bool {
    ctx.target.subresource.as_deref() == Some("scale")
}

pub async fn patch(ctx: &Ctx, user: &UserInfo) -> Result<Response, ApiError> {
    let kind = patch::PatchKind::from_content_type(&codec::media_type(&ctx.headers))?;
    if kind == patch::PatchKind::Apply {
        return server_side_apply(ctx, user).await;
    }
    if ctx.param("force").is_some() {
        return Err(ApiError::BadRequest(
            "force is only allowed for apply patches".into(),
        ));
    }
    let patch_doc = patch::parse(kind, &ctx.body)?;
    let track = Track::Update(manager(ctx)?);
    let res = ctx.target.resource;
    // A resourceVersion inside a merge-style patch is a precondition, as upstream.
    let precondition = match &patch_doc {
        Value::Object(_) => object::resource_version(&patch_doc)?,
        _ => None,
    };
    if is_scale(ctx) {
        return replace(ctx, precondition, track, |current| {
            let res = ctx.target.resource;
            let patched = patch::apply(kind, &scale::to_scale_of(res, current), &patch_doc)?;
            scale::apply_to(res, current, &patched)
        })
        .await;
    }
    replace(ctx, precondition, track, |current| {
        let mut patched = patch::apply(kind, current, &patch_doc)?;
        object::check_type_and_namespace(res, &mut patched, ctx.namespace())?;
        ctx.check_fields(&mut patched)?;
        if object::name(&patched) != ctx.name() {
            return Err(ApiError::BadRequest(
                "metadata.name cannot be changed by a patch".into(),
            ));
        }
        Ok(patched)
    })
    .await
}

/// `pods/<name>/binding`: assigns the pod to the node named in the Binding.
pub async fn bind(ctx: &Ctx) -> Result<Response, ApiError> {
    let binding = codec::decode(&ctx.headers, &ctx.body)?;
    replace_object(ctx, None, Track::None, |current| {
        podsub::bind(current, &binding)
    })
    .await?;
    Ok(codec::respond(StatusCode::CREATED, &podsub::success()))
}

/// `serviceaccounts/<name>/token` (TokenRequest): a signed token for an existing ServiceAccount,
/// bound to a pod when `spec.boundObjectRef` names one (see [`crate::api::serviceaccount`]).
pub fn token_request(ctx: &Ctx, user: &UserInfo) -> Result<Response, ApiError> {
    let issuer = ctx.state.tokens.as_ref().ok_or_else(|| {
        ApiError::ServiceUnavailable("this server has no service-account signing key".into())
    })?;
    let mut request = codec::decode(&ctx.headers, &ctx.body)?;
    let (_, sa) = load(ctx)?;
    let namespace = ctx.namespace().unwrap_or("");
    let spec = &request["spec"];
    // Upstream's bounds: at least 10 minutes, at most a day unless configured otherwise.
    let seconds = spec["expirationSeconds"]
        .as_i64()
        .unwrap_or(3600)
        .clamp(600, 86400);
    let audiences: Vec<String> = match spec["audiences"].as_array().filter(|a| !a.is_empty()) {
        Some(list) => list
            .iter()
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect(),
        None => vec![tokens::ISSUER.to_string()],
    };
    let bound = crate::api::serviceaccount::token_binding(
        ctx.state.store.as_ref(),
        user,
        namespace,
        ctx.name(),
        &spec["boundObjectRef"],
    )?;
    let subject = tokens::TokenSubject {
        namespace: namespace.to_string(),
        name: ctx.name().to_string(),
        uid: sa["metadata"]["uid"].as_str().unwrap_or("").to_string(),
    };
    let (lifetime, bound) =
        crate::api::serviceaccount::extend_projected(bound, seconds, &audiences);
    let (token, _) = issuer.issue_bound(&subject, &bound, &audiences, lifetime)?;
    // The status reports the lifetime asked for, also for an extended token (as upstream), so
    // kubelets keep rotating on the short schedule.
    let expires = chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp() + seconds, 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default();
    request["apiVersion"] = serde_json::json!("authentication.k8s.io/v1");
    request["kind"] = serde_json::json!("TokenRequest");
    request["metadata"]["name"] = serde_json::json!(ctx.name());
    request["metadata"]["namespace"] = serde_json::json!(subject.namespace);
    request["spec"]["audiences"] = serde_json::json!(audiences);
    request["spec"]["expirationSeconds"] = serde_json::json!(seconds);
    request["status"] = serde_json::json!({"token": token, "expirationTimestamp": expires});
    Ok(codec::respond(StatusCode::CREATED, &request))
}

async fn replace(
    ctx: &Ctx,
    precondition: Option<Revision>,
    track: Track,
    compute: impl Fn(&Value) -> Result<Value, ApiError>,
) -> Result<Response, ApiError> {
    Ok(present(
        ctx,
        &replace_object(ctx, precondition, track, compute).await?,
    ))
}

/// `PATCH` with `application/apply-patch+yaml`: server-side apply by `fieldManager` (required),
/// creating the object when it does not exist.
async fn server_side_apply(ctx: &Ctx, user: &UserInfo) -> Result<Response, ApiError> {
    let res = ctx.target.resource;
    if ctx.param("fieldManager").is_none_or(str::is_empty) {
        return Err(ApiError::BadRequest(
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch".into(),
        ));
    }
    let force = match ctx.param("force") {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "invalid force {other:?}: must be true or false"
            )));
        }
    };
    if !matches!(ctx.target.subresource.as_deref(), None | Some("status")) {
        return Err(ApiError::BadRequest(format!(
            "server-side apply is not supported on the {} subresource",
            ctx.target.subresource.as_deref().unwrap_or("")
        )));
    }
    let mut config = codec::parse_yaml(&ctx.body)?;
    if !config.is_object() {
        return Err(ApiError::BadRequest(
            "an apply patch must be a YAML or JSON object".into(),
        ));
    }
    for field in ["apiVersion", "kind"] {
        if config[field].as_str().is_none_or(str::is_empty) {
            return Err(ApiError::BadRequest(format!(
                "invalid object: {field} must be set in an apply patch"
            )));
        }
    }
    object::check_type_and_namespace(res, &mut config, ctx.namespace())?;
    match object::name(&config) {
        "" => config["metadata"]["name"] = Value::String(ctx.name().to_string()),
        name if name != ctx.name() => {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({name}) does not match the name on the URL ({})",
                ctx.name()
            )));
        }
        _ => {}
    }
    if ctx.target.subresource.is_none()
        && res.has_subresource("status")
        && let Some(map) = config.as_object_mut()
    {
        // The main resource's status is reset, as for updates: status is applied through /status.
        map.remove("status");
    }
    ctx.check_fields(&mut config)?;
    let who = manager(ctx)?;
    let precondition = object::resource_version(&config)?;
    let exists = match load(ctx) {
        Ok(_) => true,
        Err(ApiError::NotFound { .. }) => false,
        Err(other) => return Err(other),
    };
    if !exists {
        if ctx.target.subresource.is_some() {
            return Err(ApiError::NotFound {
                resource: res.name(),
                name: ctx.name().to_string(),
            });
        }
        let created = apply::apply(None, &config, &who, force)?;
        return create_object(ctx, user, created, |_| {}).await;
    }
    replace(ctx, precondition, Track::Done, |current| {
        apply::apply(Some(current), &config, &who, force)
    })
    .await
}

/// Reads the current object, computes the new one with `compute`, and stores it with a
/// compare-and-swap: on `precondition` if given, else on the revision just read (retrying races).
async fn replace_object(
    ctx: &Ctx,
    precondition: Option<Revision>,
    track: Track,
    compute: impl Fn(&Value) -> Result<Value, ApiError>,
) -> Result<Value, ApiError> {
    let res = ctx.target.resource;
    let conflict = || ApiError::Conflict {
        resource: res.name(),
        name: ctx.name().to_string(),
    };
    for _ in 0..UNCONDITIONAL_RETRIES {
        let (revision, current) = load(ctx)?;
        if precondition.is_some_and(|want| want != revision) {
            return Err(conflict());
        }
        let mut new = compute(&current)?;
        object::prepare_update(res, &mut new, &current, ctx.target.subresource.as_deref())?;
        if ctx.target.subresource.is_none() {
            defaults::apply(res, &mut new);
        }
        match &track {
            Track::Update(who) => apply::record_update(Some(&current), &mut new, who),
            Track::Done | Track::None => {}
        }
        let state = &ctx.state;
        let _allocation = services::admit(
            &state.services,
            state.store.as_ref(),
            res,
            Some(&current),
            &mut new,
        )
        .await?;
        let _quota = if ctx.target.subresource.is_none() {
            quota::admit_change(
                state.store.as_ref(),
                res,
                ctx.namespace(),
                Some(&current),
                &new,
            )
            .await?
        } else {
            None
        };
        lifecycle::check_update(res, &current, &new)?;
        priority::admit(state.store.as_ref(), res, Some(&current), &mut new)?;
        validate::schema_defaults(res, &mut new);
        validate::validate(res, &new, Some(&current))?;
        object::set_resource_version(&mut new, revision);
        if new == current || ctx.dry_run() {
            // Nothing changed: no write, no event, same resourceVersion (as upstream).
            return Ok(new);
        }
        let key = res.key(ctx.namespace(), ctx.name());
        let store = &ctx.state.store;
        // An object being deleted goes away once its last finalizer is removed.
        let outcome = if lifecycle::finalized(res, &new) {
            store.delete(&key, Some(revision)).await
        } else {
            store.update(&key, object::to_store(&new)?, revision).await
        };
        match outcome {
            Ok(kv) => {
                object::set_resource_version(&mut new, kv.mod_revision);
                return Ok(new);
            }
            Err(StoreError::Conflict { .. }) if precondition.is_none() => continue,
            Err(e) => return Err(ApiError::from_store(e, &res.name(), ctx.name())),
        }
    }
    Err(conflict())
}

/// The response body of a write: the object, or its Scale view for the scale subresource.
fn present(ctx: &Ctx, obj: &Value) -> Response {
    if is_scale(ctx) {
        codec::respond(
            StatusCode::OK,
            &scale::to_scale_of(ctx.target.resource, obj),
        )
    } else {
        codec::respond(StatusCode::OK, obj)
    }
}
