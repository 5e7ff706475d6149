//! The generic resource handlers. Every resource request goes through [`resource`]: resolve the URL
//! against the registry, pick the verb, open a span, then [`run`]: authorize, read the body and run
//! the verb's handler, which decodes, defaults, validates, admits, stores and encodes; the outcome is
//! counted in the metrics. Nothing here names a kind; the action subresources (`binding`,
//! `eviction`, `token`) are dispatched by their name.

mod delete;
mod read;
mod watch;
mod write;

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use axum::{Extension, body};
use tracing::Instrument;

use super::ApiState;
use super::auth::{self, Attributes, UserInfo};
use super::discovery;
use super::error::ApiError;
use super::podsub;
use super::strict;
use super::target::{self, Target};
use serde_json::Value;

/// The largest request body accepted (the apiserver's limit is 3 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// Everything a verb handler needs about one request.
pub struct Ctx {
    pub state: ApiState,
    pub target: Target,
    pub query: HashMap<String, String>,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// `Warning` headers for the response (field validation in Warn mode).
    pub warnings: std::sync::Mutex<Vec<String>>,
}

impl Ctx {
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query.get(key).map(String::as_str)
    }

    pub fn namespace(&self) -> Option<&str> {
        self.target.namespace.as_deref()
    }

    /// The object name from the URL (verbs that need one are only routed when it is present).
    pub fn name(&self) -> &str {
        self.target.name.as_deref().unwrap_or("")
    }

    pub fn dry_run(&self) -> bool {
        self.param("dryRun") == Some("All")
    }

    /// Field validation of a whole object of the target kind under `fieldValidation`: refuses
    /// (Strict) or drops unknown fields, recording warnings (Warn).
    pub fn check_fields(&self, obj: &mut Value) -> Result<(), ApiError> {
        let mode = strict::Mode::parse(self.param("fieldValidation"))?;
        let found = strict::check(self.target.resource, obj, mode)?;
        if !found.is_empty() {
            let mut warnings = self.warnings.lock().unwrap_or_else(|e| e.into_inner());
            for warning in found {
                if !warnings.contains(&warning) {
                    warnings.push(warning);
                }
            }
        }
        Ok(())
    }
}

/// `/api/{*rest}`: core group discovery (`/api/v1`) or a core resource.
pub async fn core(
    State(state): State<ApiState>,
    Extension(user): Extension<UserInfo>,
    request: Request,
) -> Result<Response, ApiError> {
    let path = request.uri().path().to_string();
    let segments: Vec<&str> = path.trim_start_matches("/api/").split('/').collect();
    match segments.as_slice() {
        [version] => discovery::resource_list(&state.custom.snapshot(), "", version),
        [version, rest @ ..] => resource(state, user, "", version, rest, request).await,
        [] => Err(ApiError::NoRoute),
    }
}

/// `/apis/{*rest}`: group and group-version discovery or a named-group resource.
pub async fn named(
    State(state): State<ApiState>,
    Extension(user): Extension<UserInfo>,
    request: Request,
) -> Result<Response, ApiError> {
    let path = request.uri().path().to_string();
    let segments: Vec<&str> = path.trim_start_matches("/apis/").split('/').collect();
    match segments.as_slice() {
        [group] => discovery::group(&state.custom.snapshot(), group),
        [group, version] => discovery::resource_list(&state.custom.snapshot(), group, version),
        [group, version, rest @ ..] => resource(state, user, group, version, rest, request).await,
        [] => Err(ApiError::NoRoute),
    }
}

async fn resource(
    state: ApiState,
    user: UserInfo,
    group: &str,
    version: &str,
    segments: &[&str],
    request: Request,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let metrics = state.metrics.clone();
    let target = target::parse(&state.custom.snapshot(), group, version, segments)?;
    let Query(query) = Query::<HashMap<String, String>>::try_from_uri(request.uri())
        .map_err(|e| ApiError::BadRequest(format!("invalid query: {e}")))?;
    let method = request.method().clone();
    let verb = verb_of(&method, &target, &query)?;
    let plural = target.resource.plural;
    let span = tracing::info_span!(
        "api",
        verb,
        resource = target.resource.plural,
        namespace = target.namespace.as_deref().unwrap_or(""),
        name = target.name.as_deref().unwrap_or(""),
        user = user.username.as_str(),
    );
    async move {
        let response = run(state, user, target, query, verb, request).await;
        let code = match &response {
            Ok(ok) => ok.status(),
            Err(error) => error.code(),
        };
        metrics.observe(verb, plural, code.as_u16(), started.elapsed());
        response
    }
    .instrument(span)
    .await
}

/// authorize → read the body → the verb's handler.
async fn run(
    state: ApiState,
    user: UserInfo,
    target: Target,
    query: HashMap<String, String>,
    verb: &'static str,
    request: Request,
) -> Result<Response, ApiError> {
    let attrs = Attributes {
        verb,
        group: target.resource.group,
        resource: target.resource.plural,
        subresource: target.subresource.as_deref(),
        namespace: target.namespace.as_deref(),
        name: target.name.as_deref(),
    };
    auth::authorize(state.store.as_ref(), &user, &attrs)?;
    if let Some(sub) = target.subresource.as_deref()
        && podsub::STREAMING.contains(&sub)
    {
        return super::kubelet_proxy::proxy(&state, &user, &target, &query, request).await;
    }
    let (parts, body) = request.into_parts();
    let body = body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|e| ApiError::BadRequest(format!("reading the request body: {e}")))?;
    let ctx = Ctx {
        state,
        target,
        query,
        headers: parts.headers,
        body,
        warnings: std::sync::Mutex::new(Vec::new()),
    };
    let mut response = dispatch(&ctx, &user, verb).await;
    if let Ok(ok) = &mut response {
        let warnings = ctx.warnings.lock().unwrap_or_else(|e| e.into_inner());
        for warning in warnings.iter() {
            // RFC 7234 warn-code 299 (miscellaneous persistent warning), agent "-", quoted text.
            let text = format!("299 - {}", Value::String(warning.clone()));
            if let Ok(value) = axum::http::HeaderValue::from_str(&text) {
                ok.headers_mut().append(axum::http::header::WARNING, value);
            }
        }
    }
    if let (Ok(_), Some(hook)) = (&response, ctx.target.resource.after_write)
        && !matches!(verb, "get" | "list" | "watch")
        && !ctx.dry_run()
    {
        // The write is durable; a failing hook is logged and retried by the next write or start.
        if let Err(error) = hook(&ctx.state).await {
            tracing::error!(%error, "after-write hook failed");
        }
    }
    response
}

async fn dispatch(ctx: &Ctx, user: &UserInfo, verb: &str) -> Result<Response, ApiError> {
    match verb {
        "get" => read::get(ctx),
        "list" => read::list(ctx),
        "watch" => watch::watch(ctx),
        "create" => match (
            ctx.target.resource.review,
            ctx.target.subresource.as_deref(),
        ) {
            (Some(review), _) => write::review(ctx, user, review),
            (None, Some("binding")) => write::bind(ctx).await,
            (None, Some("eviction")) => delete::evict(ctx).await,
            (None, Some("token")) => write::token_request(ctx, user),
            (None, _) => write::create(ctx, user).await,
        },
        "update" => write::update(ctx).await,
        "patch" => write::patch(ctx, user).await,
        "delete" => delete::delete(ctx).await,
        "deletecollection" => delete::delete_collection(ctx).await,
        other => Err(ApiError::MethodNotAllowed(format!(
            "verb {other} is not supported"
        ))),
    }
}

/// The Kubernetes verb of a request, as authorization sees it.
fn verb_of(
    method: &Method,
    target: &Target,
    query: &HashMap<String, String>,
) -> Result<&'static str, ApiError> {
    let watch = matches!(query.get("watch").map(String::as_str), Some("1" | "true"));
    let named = target.name.is_some();
    let verb = match (method.as_str(), named) {
        ("GET", true) => "get",
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("POST", false) => "create",
        ("POST", true) if target.subresource.is_some() => "create",
        ("PUT", true) => "update",
        ("PATCH", true) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => {
            return Err(ApiError::MethodNotAllowed(format!(
                "the server does not allow this method on the requested resource ({method})"
            )));
        }
    };
    let sub_allows = |name: &str| {
        target
            .resource
            .subresources
            .iter()
            .any(|s| s.name == name && s.verbs.contains(&verb))
    };
    let allowed = match target.subresource.as_deref() {
        Some(sub) => sub_allows(sub),
        None => target.resource.verbs.contains(&verb),
    };
    if !allowed {
        return Err(ApiError::MethodNotAllowed(format!(
            "the server does not allow this method on the requested resource ({method})"
        )));
    }
    Ok(verb)
}
