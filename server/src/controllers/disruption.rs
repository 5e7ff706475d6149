//! The disruption control loop: keeps each PodDisruptionBudget's `status` current — how many of
//! its pods exist (`expectedPods`), are ready (`currentHealthy`), must stay ready
//! (`desiredHealthy`, from `minAvailable` or `maxUnavailable`, percentages rounded up as upstream
//! rounds them) and so how many may be disrupted now (`disruptionsAllowed`), with the
//! `DisruptionAllowed` condition.
//!
//! Watches PodDisruptionBudgets and Pods (a pod change wakes every budget of its namespace).
//! Simplification: `expectedPods` counts the selected pods that are not finished, where upstream
//! asks their controllers' scale; the two agree whenever the workload is at its size.
//!
//! Invariant: status is written only when it changed, so an unchanged set of pods never causes a
//! write. The eviction subresource does not consult budgets yet; this status is what it would read.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;

use super::cache;
use super::informer::Informers;
use super::{ControllerError, pods, selector};

pub struct Context {
    pub client: kube::Client,
    pub pods: Store<Pod>,
}

/// `value` of `total`: a number, or a percentage rounded up.
fn scaled(value: &IntOrString, total: i32) -> i32 {
    match value {
        IntOrString::Int(n) => *n,
        IntOrString::String(text) => {
            let percent: i64 = text.trim_end_matches('%').parse().unwrap_or(0);
            let n = (i64::from(total) * percent + 99) / 100;
            i32::try_from(n).unwrap_or(i32::MAX)
        }
    }
}

/// (expected, healthy, desired, allowed) for a budget over its selected pods.
fn budget(pdb: &PodDisruptionBudget, selected: &[Arc<Pod>]) -> (i32, i32, i32, i32) {
    let spec = pdb.spec.clone().unwrap_or_default();
    let expected = i32::try_from(selected.len()).unwrap_or(i32::MAX);
    let healthy =
        i32::try_from(selected.iter().filter(|p| pods::is_ready(p)).count()).unwrap_or(i32::MAX);
    let desired = match (&spec.min_available, &spec.max_unavailable) {
        (Some(min), _) => scaled(min, expected),
        (None, Some(max)) => (expected - scaled(max, expected)).max(0),
        (None, None) => 0,
    };
    (expected, healthy, desired, (healthy - desired).max(0))
}

async fn reconcile(
    pdb: Arc<PodDisruptionBudget>,
    ctx: Arc<Context>,
) -> Result<Action, ControllerError> {
    cache::synced(&ctx.pods).await?;
    if pdb.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = pdb.metadata.namespace.clone().unwrap_or_default();
    let name = pdb.metadata.name.clone().unwrap_or_default();
    // A missing selector selects nothing; an empty one selects every pod of the namespace.
    let chosen = pdb.spec.as_ref().and_then(|s| s.selector.clone());
    let selected: Vec<Arc<Pod>> = match chosen {
        None => Vec::new(),
        Some(sel) => ctx
            .pods
            .state()
            .into_iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(namespace.as_str()))
            .filter(|p| pods::is_active(p))
            .filter(|p| selector::matches(&sel, p.metadata.labels.as_ref()))
            .collect(),
    };
    let (expected, healthy, desired, allowed) = budget(&pdb, &selected);
    let previous = pdb.status.clone().unwrap_or_default();
    let (state, reason) = if allowed > 0 {
        ("True", "SufficientPods")
    } else {
        ("False", "InsufficientPods")
    };
    let old = previous
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "DisruptionAllowed");
    let condition = match old {
        Some(c) if c.status == state && c.reason == reason => c.clone(),
        _ => Condition {
            type_: "DisruptionAllowed".into(),
            status: state.into(),
            reason: reason.into(),
            message: String::new(),
            last_transition_time: Time(Timestamp::now()),
            observed_generation: pdb.metadata.generation,
        },
    };
    let status = PodDisruptionBudgetStatus {
        observed_generation: pdb.metadata.generation,
        disrupted_pods: previous.disrupted_pods.clone(),
        disruptions_allowed: Some(allowed),
        current_healthy: Some(healthy),
        desired_healthy: Some(desired),
        expected_pods: Some(expected),
        conditions: Some(vec![condition]),
    };
    if pdb.status.as_ref() == Some(&status) {
        return Ok(Action::await_change());
    }
    let api: Api<PodDisruptionBudget> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut updated = (*pdb).clone();
    updated.status = Some(status);
    api.replace_status(&name, &PostParams::default(), &updated)
        .await
        .map_err(|source| ControllerError::Write {
            what: format!("status of poddisruptionbudget {namespace}/{name}"),
            source,
        })?;
    Ok(Action::await_change())
}

fn error_policy(
    _pdb: Arc<PodDisruptionBudget>,
    error: &ControllerError,
    _ctx: Arc<Context>,
) -> Action {
    tracing::info!(%error, "disruption reconcile failed");
    Action::requeue(error.backoff())
}

/// Runs the disruption control loop until `shutdown`.
pub async fn run(
    client: kube::Client,
    informers: &Informers,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (pod_store, pod_events) = (informers.pods.store(), informers.pods.subscribe());
    let ctx = Arc::new(Context {
        client: client.clone(),
        pods: pod_store,
    });
    let controller = Controller::new(
        Api::<PodDisruptionBudget>::all(client),
        watcher::Config::default(),
    );
    let budgets = controller.store();
    let mapper = move |pod: Arc<Pod>| {
        let ns = pod.metadata.namespace.clone();
        budgets
            .state()
            .into_iter()
            .filter(|b| b.metadata.namespace == ns)
            .map(|b| ObjectRef::from_obj(&*b))
            .collect::<Vec<_>>()
    };
    controller
        .watches_shared_stream(pod_events, mapper)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::policy::v1::PodDisruptionBudgetSpec;

    #[test]
    fn budgets_round_percentages_up() {
        assert_eq!(scaled(&IntOrString::String("50%".into()), 3), 2);
        assert_eq!(scaled(&IntOrString::Int(2), 10), 2);
        let pdb = |min: Option<IntOrString>, max: Option<IntOrString>| PodDisruptionBudget {
            spec: Some(PodDisruptionBudgetSpec {
                min_available: min,
                max_unavailable: max,
                ..PodDisruptionBudgetSpec::default()
            }),
            ..PodDisruptionBudget::default()
        };
        let none: Vec<Arc<Pod>> = Vec::new();
        assert_eq!(
            budget(&pdb(Some(IntOrString::Int(1)), None), &none),
            (0, 0, 1, 0)
        );
        let max = pdb(None, Some(IntOrString::String("34%".into())));
        assert_eq!(budget(&max, &none), (0, 0, 0, 0));
    }
}
