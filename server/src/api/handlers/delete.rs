//! `delete` and `deletecollection`.
//!
//! An object nothing holds is removed at once and returned; a held one only starts deleting (see
//! [`crate::api::lifecycle`]). DeleteOptions (body optional, with or without kind/apiVersion) may carry
//! preconditions on uid and resourceVersion.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::Ctx;
use super::read::{list_page, load};
use crate::api::codec;
use crate::api::error::ApiError;
use crate::api::{lifecycle, object, podsub, priority};
use crate::store::{Revision, StoreError};

const RETRIES: usize = 5;

fn options(ctx: &Ctx) -> Result<Value, ApiError> {
    if ctx.body.iter().all(u8::is_ascii_whitespace) {
        Ok(json!({}))
    } else {
        codec::decode(&ctx.headers, &ctx.body)
    }
}

pub async fn delete(ctx: &Ctx) -> Result<Response, ApiError> {
    let opts = options(ctx)?;
    let obj = delete_with(ctx, &opts).await?;
    Ok(codec::respond(StatusCode::OK, &obj))
}

/// `pods/<name>/eviction`: a delete with the Eviction's `deleteOptions` (no disruption budgets yet).
pub async fn evict(ctx: &Ctx) -> Result<Response, ApiError> {
    let eviction = options(ctx)?;
    delete_with(ctx, &eviction["deleteOptions"]).await?;
    Ok(codec::respond(StatusCode::CREATED, &podsub::success()))
}

async fn delete_with(ctx: &Ctx, opts: &Value) -> Result<Value, ApiError> {
    let res = ctx.target.resource;
    priority::admit_delete(res, ctx.name())?;
    let conflict = || ApiError::Conflict {
        resource: res.name(),
        name: ctx.name().to_string(),
    };
    for _ in 0..RETRIES {
        let (revision, current) = load(ctx)?;
        let pre = &opts["preconditions"];
        if pre["uid"]
            .as_str()
            .is_some_and(|uid| current["metadata"]["uid"] != json!(uid))
            || pre["resourceVersion"]
                .as_str()
                .is_some_and(|rv| rv != revision.to_string())
        {
            return Err(conflict());
        }
        if ctx.dry_run() {
            return Ok(current);
        }
        match delete_one(ctx, revision, current, opts).await {
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(ApiError::from_store(e, &res.name(), ctx.name())),
            Ok(obj) => return Ok(obj),
        }
    }
    Err(conflict())
}

/// Deletes (or starts deleting) one object read at `revision`; returns what the client sees.
async fn delete_one(
    ctx: &Ctx,
    revision: Revision,
    obj: Value,
    opts: &Value,
) -> Result<Value, StoreError> {
    let res = ctx.target.resource;
    let name = object::name(&obj).to_string();
    let key = res.key(
        ctx.namespace().or(obj["metadata"]["namespace"].as_str()),
        &name,
    );
    let store = &ctx.state.store;
    match lifecycle::plan_deletion(res, &obj, opts, chrono::Utc::now()) {
        lifecycle::Deletion::Now => {
            store.delete(&key, Some(revision)).await?;
            Ok(obj)
        }
        lifecycle::Deletion::Unchanged => Ok(obj),
        lifecycle::Deletion::Mark(mut marked) => {
            let bytes =
                object::to_store(&marked).map_err(|e| StoreError::Backend(e.to_string()))?;
            let kv = store.update(&key, bytes, revision).await?;
            object::set_resource_version(&mut marked, kv.mod_revision);
            Ok(marked)
        }
    }
}

pub async fn delete_collection(ctx: &Ctx) -> Result<Response, ApiError> {
    let opts = options(ctx)?;
    let res = ctx.target.resource;
    let page = list_page(ctx)?;
    // A dry run reports what would be deleted and touches nothing.
    let (mut deleted, items) = if ctx.dry_run() {
        (page.items, Vec::new())
    } else {
        (Vec::new(), page.items)
    };
    for obj in items {
        let revision = object::resource_version(&obj)?.unwrap_or_default();
        let name = object::name(&obj).to_string();
        match delete_one(ctx, revision, obj, &opts).await {
            Ok(obj) => deleted.push(obj),
            // Changed or removed since the list: leave it to the next call, as upstream does.
            Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => {}
            Err(e) => return Err(ApiError::from_store(e, &res.name(), &name)),
        }
    }
    Ok(codec::respond(
        StatusCode::OK,
        &json!({
            "kind": format!("{}List", res.kind),
            "apiVersion": res.api_version(),
            "metadata": {"resourceVersion": page.revision.to_string()},
            "items": deleted,
        }),
    ))
}
