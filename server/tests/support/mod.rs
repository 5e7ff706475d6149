//! A whole control plane in-process for controller and scheduler tests: the API over HTTPS (for
//! the real kubectl) on a real SQLite store in a temp dir ([`kubectl_api`]), the control loops and
//! the scheduler on in-process clients, and the [`node_sim`] node simulator standing in for
//! kubelets.
//!
//! A [`Cluster`] dereferences to its [`kubectl_api::ApiServer`] (kubectl runner, manifest writer,
//! state, files). Dropping it stops everything and removes its files.

#![allow(dead_code)]

pub mod kubectl_api;
pub mod manifests;
pub mod node_sim;
pub mod served_app;

use std::ops::Deref;

use r3s_server::client::{self, SCHEDULER_USER};
use r3s_server::controllers::ControllerOptions;
use r3s_server::controllers::informer::Informers;
use r3s_server::scheduler::{self, SchedulerOptions};

pub use kubectl_api::{have_kubectl, wait_for};

pub struct Cluster {
    pub api: kubectl_api::ApiServer,
    /// An administrator's client (in-process, `system:masters`).
    pub client: kube::Client,
    pub nodes: Option<node_sim::NodeSimulator>,
}

impl Deref for Cluster {
    type Target = kubectl_api::ApiServer;

    fn deref(&self) -> &kubectl_api::ApiServer {
        &self.api
    }
}

/// Starts the API, the control loops, the scheduler and `nodes` simulated nodes.
pub async fn start(nodes: &[&str], opts: ControllerOptions) -> Cluster {
    let mut api = kubectl_api::start(kubectl_api::Options {
        controllers: Some(opts),
        ..kubectl_api::Options::default()
    })
    .await;
    let sched = client::in_process(api.state.clone(), client::identity(SCHEDULER_USER));
    let shutdown = api.shutdown_signal();
    let informers = match &api.informers {
        Some(shared) => shared.clone(),
        None => Informers::start(&sched),
    };
    api.keep(tokio::spawn(scheduler::run(
        sched,
        SchedulerOptions::default(),
        informers,
        shutdown,
    )));
    let admin = api.admin();
    // The start-up namespaces are served (`kube-node-lease` too, where the simulator writes
    // Leases).
    let sim = node_sim::NodeSimulator::start(admin.clone(), nodes).await;
    Cluster {
        api,
        client: admin,
        nodes: Some(sim),
    }
}

impl Cluster {
    pub fn sim(&self) -> &node_sim::NodeSimulator {
        self.nodes.as_ref().expect("node simulator")
    }
}
