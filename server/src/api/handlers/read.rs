//! `get` and `list`, as JSON objects/lists or as server-side Tables.
//!
//! Lists read one consistent snapshot: the first page fixes the store revision and the continue
//! token carries it, so `limit`/`continue` pages never mix revisions. With selectors, pages are
//! filled by reading further until `limit` matching items are found.

use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use super::Ctx;
use crate::api::codec;
use crate::api::error::ApiError;
use crate::api::object;
use crate::api::scale;
use crate::api::selector::{FieldSelector, LabelSelector};
use crate::api::table::{self, IncludeObject};
use crate::store::{ListOptions, Revision, StoreError};

pub fn get(ctx: &Ctx) -> Result<Response, ApiError> {
    let obj = load(ctx)?.1;
    if ctx.target.subresource.as_deref() == Some("scale") {
        return Ok(codec::respond(
            StatusCode::OK,
            &scale::to_scale_of(ctx.target.resource, &obj),
        ));
    }
    if codec::wants_table(&ctx.headers) {
        let include = IncludeObject::parse(ctx.param("includeObject"));
        let meta = json!({"resourceVersion": obj["metadata"]["resourceVersion"]});
        let columns = ctx.target.resource.columns;
        return Ok(codec::respond_table(&table::table(
            columns,
            &[obj],
            include,
            meta,
            true,
        )));
    }
    Ok(codec::respond(StatusCode::OK, &obj))
}

/// The stored object named by the URL (404 if absent), with its revision.
pub fn load(ctx: &Ctx) -> Result<(Revision, Value), ApiError> {
    let res = ctx.target.resource;
    let key = res.key(ctx.namespace(), ctx.name());
    let kv = ctx
        .state
        .store
        .get(&key)
        .map_err(|e| ApiError::from_store(e, &res.name(), ctx.name()))?
        .ok_or_else(|| ApiError::NotFound {
            resource: res.name(),
            name: ctx.name().to_string(),
        })?;
    Ok((kv.mod_revision, object::from_store(&kv)?))
}

/// One page of a list.
pub struct Page {
    pub items: Vec<Value>,
    pub revision: Revision,
    pub continue_token: Option<String>,
    pub remaining: Option<usize>,
}

/// The label and field selectors of a list or watch.
pub fn selectors(ctx: &Ctx) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(ctx.param("labelSelector").unwrap_or(""))?;
    let fields = FieldSelector::parse(
        ctx.param("fieldSelector").unwrap_or(""),
        ctx.target.resource,
    )?;
    Ok((labels, fields))
}

/// Reads one page of matching objects honouring `limit`, `continue` and `resourceVersion`.
pub fn list_page(ctx: &Ctx) -> Result<Page, ApiError> {
    let res = ctx.target.resource;
    let (labels, fields) = selectors(ctx)?;
    let limit = match ctx.param("limit") {
        None | Some("") => 0,
        Some(text) => text
            .parse::<usize>()
            .map_err(|_| ApiError::BadRequest(format!("invalid limit {text:?}")))?,
    };
    let (mut revision, mut start_after) = match ctx.param("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let (rev, key) = decode_continue(token)?;
            (Some(rev), Some(key))
        }
        None => (exact_revision(ctx)?, None),
    };
    let prefix = res.list_prefix(ctx.namespace());
    if start_after
        .as_ref()
        .is_some_and(|k| !k.starts_with(&prefix))
    {
        return Err(ApiError::BadRequest(
            "continue key is not valid: it belongs to another list".into(),
        ));
    }
    let filtering = !labels.is_empty() || !fields.is_empty();
    let mut items = Vec::new();
    loop {
        let opts = ListOptions {
            revision,
            limit: (limit > 0).then_some(limit),
            start_after: start_after.clone(),
        };
        let page = ctx.state.store.list(&prefix, &opts).map_err(|e| match e {
            StoreError::Expired { .. } if opts.start_after.is_some() => ApiError::Expired(
                "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.".into(),
            ),
            other => ApiError::from_store(other, &res.name(), ""),
        })?;
        revision = Some(page.revision);
        let total = page.items.len();
        for (i, kv) in page.items.iter().enumerate() {
            let obj = object::from_store(kv)?;
            if labels.matches(&obj) && fields.matches(&obj) {
                items.push(obj);
            }
            if limit > 0 && items.len() >= limit {
                // More follow if this page had more items or the store has more after it.
                let more = i + 1 < total || page.more_after.is_some();
                let token = more.then(|| encode_continue(page.revision, &kv.key));
                let remaining = (!filtering && more).then_some(page.remaining);
                return Ok(Page {
                    items,
                    revision: page.revision,
                    continue_token: token,
                    remaining,
                });
            }
        }
        match &page.more_after {
            Some(after) => start_after = Some(after.clone()),
            None => {
                return Ok(Page {
                    items,
                    revision: page.revision,
                    continue_token: None,
                    remaining: None,
                });
            }
        }
    }
}

/// `resourceVersion=N&resourceVersionMatch=Exact` reads at N; anything else reads the newest state
/// (which satisfies `NotOlderThan` and `resourceVersion=0`).
fn exact_revision(ctx: &Ctx) -> Result<Option<Revision>, ApiError> {
    if ctx.param("resourceVersionMatch") != Some("Exact") {
        return Ok(None);
    }
    let text = ctx.param("resourceVersion").unwrap_or("");
    text.parse().map(Some).map_err(|_| {
        ApiError::BadRequest(format!(
            "invalid resourceVersion {text:?} for an Exact match"
        ))
    })
}

pub fn list(ctx: &Ctx) -> Result<Response, ApiError> {
    let res = ctx.target.resource;
    let page = list_page(ctx)?;
    let mut meta = json!({"resourceVersion": page.revision.to_string()});
    if let Some(token) = &page.continue_token {
        meta["continue"] = json!(token);
    }
    if let Some(remaining) = page.remaining {
        meta["remainingItemCount"] = json!(remaining);
    }
    if codec::wants_table(&ctx.headers) {
        let include = IncludeObject::parse(ctx.param("includeObject"));
        return Ok(codec::respond_table(&table::table(
            res.columns,
            &page.items,
            include,
            meta,
            true,
        )));
    }
    Ok(codec::respond(
        StatusCode::OK,
        &json!({
            "kind": format!("{}List", res.kind),
            "apiVersion": res.api_version(),
            "metadata": meta,
            "items": page.items,
        }),
    ))
}

fn encode_continue(revision: Revision, key: &str) -> String {
    URL_SAFE_NO_PAD.encode(json!({"rv": revision, "start": key}).to_string())
}

fn decode_continue(token: &str) -> Result<(Revision, String), ApiError> {
    let bad = || ApiError::BadRequest("continue key is not valid: malformed".into());
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let rev = value["rv"].as_i64().ok_or_else(bad)?;
    let key = value["start"].as_str().ok_or_else(bad)?;
    Ok((rev, key.to_string()))
}
