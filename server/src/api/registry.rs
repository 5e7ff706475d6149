//! The resource registry: one table row per served resource (group, version, kind, plural,
//! singular, scope, verbs, subresources, short names, categories, table columns).
//!
//! Discovery, OpenAPI, routing, storage keys and Table output are all derived from this table; the
//! handlers never name a kind. Invariant: a resource listed here is fully served by the generic
//! handlers, so discovery never advertises something the server cannot answer.

use super::table::{self, Column};
use super::{reviews, subject_reviews};

/// A subresource served for a resource (`status`, `scale`).
#[derive(Debug)]
pub struct Subresource {
    pub name: &'static str,
    pub verbs: &'static [&'static str],
    /// `(group, version, kind)` it answers with when that is not the parent's kind.
    pub kind: Option<(&'static str, &'static str, &'static str)>,
}

/// One served resource.
#[derive(Debug)]
pub struct Resource {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub subresources: &'static [Subresource],
    /// Table columns after `Name` (upstream's order, `Age` included where upstream puts it).
    pub columns: &'static [Column],
    /// Whether `metadata.generation` is maintained (1 on create, +1 on each spec change).
    pub generation: bool,
    /// The verbs served (and advertised).
    pub verbs: &'static [&'static str],
    /// For create-only review kinds that are computed, never stored (access reviews).
    pub review: Option<Review>,
    /// Runs after every successful write (CRDs re-sync the custom resources).
    pub after_write: Option<AfterWrite>,
}

/// A hook run after a successful write to a resource.
pub type AfterWrite =
    for<'a> fn(
        &'a super::ApiState,
    ) -> futures::future::BoxFuture<'a, Result<(), super::error::ApiError>>;

/// Computes the answer of a review kind from the requesting user, the namespace of the URL (for
/// namespaced reviews) and the request body.
pub type Review = fn(
    &super::ApiState,
    &super::auth::UserInfo,
    Option<&str>,
    serde_json::Value,
) -> Result<serde_json::Value, super::error::ApiError>;

/// The verbs every resource answers.
pub const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

const STATUS_ONLY: Subresource = Subresource {
    name: "status",
    verbs: &["get", "patch", "update"],
    kind: None,
};
const SCALE_ONLY: Subresource = Subresource {
    name: "scale",
    verbs: &["get", "patch", "update"],
    kind: Some(("autoscaling", "v1", "Scale")),
};
pub(crate) const STATUS: &[Subresource] = &[STATUS_ONLY];
pub(crate) const SCALE: &[Subresource] = &[SCALE_ONLY];
const SERVICEACCOUNT_SUBRESOURCES: &[Subresource] = &[Subresource {
    name: "token",
    verbs: &["create"],
    kind: Some(("authentication.k8s.io", "v1", "TokenRequest")),
}];
const POD_SUBRESOURCES: &[Subresource] = &[
    Subresource {
        name: "attach",
        verbs: &["create", "get"],
        kind: Some(("", "v1", "PodAttachOptions")),
    },
    Subresource {
        name: "binding",
        verbs: &["create"],
        kind: Some(("", "v1", "Binding")),
    },
    Subresource {
        name: "eviction",
        verbs: &["create"],
        kind: Some(("policy", "v1", "Eviction")),
    },
    Subresource {
        name: "exec",
        verbs: &["create", "get"],
        kind: Some(("", "v1", "PodExecOptions")),
    },
    Subresource {
        name: "log",
        verbs: &["get"],
        kind: None,
    },
    Subresource {
        name: "portforward",
        verbs: &["create", "get"],
        kind: Some(("", "v1", "PodPortForwardOptions")),
    },
    STATUS_ONLY,
];
const NAMESPACE_SUBRESOURCES: &[Subresource] = &[
    Subresource {
        name: "finalize",
        verbs: &["update"],
        kind: None,
    },
    STATUS_ONLY,
];
pub(crate) const STATUS_SCALE: &[Subresource] = &[SCALE_ONLY, STATUS_ONLY];

impl Resource {
    /// `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn name(&self) -> super::error::ResourceName {
        super::error::ResourceName {
            group: self.group.to_string(),
            plural: self.plural.to_string(),
        }
    }

    pub fn has_subresource(&self, name: &str) -> bool {
        self.subresources.iter().any(|s| s.name == name)
    }

    /// The store prefix of every object of this resource: `/registry/[<group>/]<plural>/`.
    pub fn key_prefix(&self) -> String {
        if self.group.is_empty() {
            format!("/registry/{}/", self.plural)
        } else {
            format!("/registry/{}/{}/", self.group, self.plural)
        }
    }

    /// The store prefix for one namespace (or the whole resource when `namespace` is `None`).
    pub fn list_prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{ns}/", self.key_prefix()),
            _ => self.key_prefix(),
        }
    }

    /// The store key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}{name}", self.list_prefix(namespace))
    }
}

macro_rules! resource {
    ($group:expr, $kind:expr, $plural:expr, $singular:expr, namespaced: $ns:expr,
     short: $short:expr, cat: $cat:expr, sub: $sub:expr, cols: $cols:expr, gen: $generation:expr) => {
        Resource {
            group: $group,
            version: "v1",
            kind: $kind,
            plural: $plural,
            singular: $singular,
            namespaced: $ns,
            short_names: $short,
            categories: $cat,
            subresources: $sub,
            columns: $cols,
            generation: $generation,
            verbs: VERBS,
            review: None,
            after_write: None,
        }
    };
}

/// A cluster-scoped, create-only kind answered by `review` (nothing is stored).
const fn review(
    group: &'static str,
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    review: Review,
) -> Resource {
    Resource {
        group,
        version: "v1",
        kind,
        plural,
        singular,
        namespaced: false,
        short_names: &[],
        categories: &[],
        subresources: &[],
        columns: table::AGE_ONLY,
        generation: false,
        verbs: &["create"],
        review: Some(review),
        after_write: None,
    }
}

const ALL: &[&str] = &["all"];
const NONE: &[&str] = &[];

/// Every served resource. Groups appear in discovery in the order of their first resource.
pub static RESOURCES: &[Resource] = &[
    resource!("", "Namespace", "namespaces", "namespace", namespaced: false,
        short: &["ns"], cat: NONE, sub: NAMESPACE_SUBRESOURCES, cols: table::NAMESPACE, gen: false),
    resource!("", "ConfigMap", "configmaps", "configmap", namespaced: true,
        short: &["cm"], cat: NONE, sub: &[], cols: table::CONFIGMAP, gen: false),
    resource!("", "Secret", "secrets", "secret", namespaced: true,
        short: NONE, cat: NONE, sub: &[], cols: table::SECRET, gen: false),
    resource!("", "Pod", "pods", "pod", namespaced: true,
        short: &["po"], cat: ALL, sub: POD_SUBRESOURCES, cols: table::POD, gen: true),
    resource!("", "Service", "services", "service", namespaced: true,
        short: &["svc"], cat: ALL, sub: STATUS, cols: table::SERVICE, gen: false),
    resource!("", "ServiceAccount", "serviceaccounts", "serviceaccount", namespaced: true,
        short: &["sa"], cat: NONE, sub: SERVICEACCOUNT_SUBRESOURCES, cols: table::SERVICEACCOUNT, gen: false),
    resource!("", "Node", "nodes", "node", namespaced: false,
        short: &["no"], cat: NONE, sub: STATUS, cols: table::NODE, gen: false),
    resource!("", "Event", "events", "event", namespaced: true,
        short: &["ev"], cat: NONE, sub: &[], cols: table::EVENT, gen: false),
    resource!("", "Endpoints", "endpoints", "endpoints", namespaced: true,
        short: &["ep"], cat: NONE, sub: &[], cols: table::ENDPOINTS, gen: false),
    resource!("", "PersistentVolume", "persistentvolumes", "persistentvolume", namespaced: false,
        short: &["pv"], cat: NONE, sub: STATUS, cols: table::PERSISTENT_VOLUME, gen: false),
    resource!("", "PersistentVolumeClaim", "persistentvolumeclaims", "persistentvolumeclaim",
        namespaced: true, short: &["pvc"], cat: NONE, sub: STATUS,
        cols: table::PERSISTENT_VOLUME_CLAIM, gen: false),
    resource!("", "ResourceQuota", "resourcequotas", "resourcequota", namespaced: true,
        short: &["quota"], cat: NONE, sub: STATUS, cols: table::RESOURCE_QUOTA, gen: false),
    resource!("", "LimitRange", "limitranges", "limitrange", namespaced: true,
        short: &["limits"], cat: NONE, sub: &[], cols: table::LIMIT_RANGE, gen: false),
    resource!("apps", "Deployment", "deployments", "deployment", namespaced: true,
        short: &["deploy"], cat: ALL, sub: STATUS_SCALE, cols: table::DEPLOYMENT, gen: true),
    resource!("apps", "ReplicaSet", "replicasets", "replicaset", namespaced: true,
        short: &["rs"], cat: ALL, sub: STATUS_SCALE, cols: table::REPLICASET, gen: true),
    resource!("apps", "DaemonSet", "daemonsets", "daemonset", namespaced: true,
        short: &["ds"], cat: ALL, sub: STATUS, cols: table::DAEMONSET, gen: true),
    resource!("apps", "StatefulSet", "statefulsets", "statefulset", namespaced: true,
        short: &["sts"], cat: ALL, sub: STATUS_SCALE, cols: table::STATEFULSET, gen: true),
    resource!("apps", "ControllerRevision", "controllerrevisions", "controllerrevision",
        namespaced: true, short: NONE, cat: NONE, sub: &[], cols: table::CONTROLLER_REVISION,
        gen: false),
    resource!("batch", "Job", "jobs", "job", namespaced: true,
        short: NONE, cat: ALL, sub: STATUS, cols: table::JOB, gen: true),
    resource!("batch", "CronJob", "cronjobs", "cronjob", namespaced: true,
        short: &["cj"], cat: ALL, sub: STATUS, cols: table::CRONJOB, gen: true),
    resource!("discovery.k8s.io", "EndpointSlice", "endpointslices", "endpointslice",
        namespaced: true, short: NONE, cat: NONE, sub: &[], cols: table::ENDPOINT_SLICE,
        gen: false),
    resource!("networking.k8s.io", "Ingress", "ingresses", "ingress", namespaced: true,
        short: &["ing"], cat: NONE, sub: STATUS, cols: table::INGRESS, gen: true),
    resource!("networking.k8s.io", "IngressClass", "ingressclasses", "ingressclass",
        namespaced: false, short: NONE, cat: NONE, sub: &[], cols: table::INGRESS_CLASS,
        gen: true),
    resource!("networking.k8s.io", "NetworkPolicy", "networkpolicies", "networkpolicy",
        namespaced: true, short: &["netpol"], cat: NONE, sub: &[], cols: table::NETWORK_POLICY,
        gen: true),
    resource!("policy", "PodDisruptionBudget", "poddisruptionbudgets", "poddisruptionbudget",
        namespaced: true, short: &["pdb"], cat: NONE, sub: STATUS,
        cols: table::POD_DISRUPTION_BUDGET, gen: true),
    resource!("scheduling.k8s.io", "PriorityClass", "priorityclasses", "priorityclass",
        namespaced: false, short: &["pc"], cat: NONE, sub: &[], cols: table::PRIORITY_CLASS,
        gen: false),
    resource!("coordination.k8s.io", "Lease", "leases", "lease", namespaced: true,
        short: NONE, cat: NONE, sub: &[], cols: table::LEASE, gen: false),
    resource!("storage.k8s.io", "StorageClass", "storageclasses", "storageclass",
        namespaced: false, short: &["sc"], cat: NONE, sub: &[], cols: table::STORAGE_CLASS,
        gen: false),
    resource!("rbac.authorization.k8s.io", "ClusterRole", "clusterroles", "clusterrole",
        namespaced: false, short: NONE, cat: NONE, sub: &[], cols: table::ROLE, gen: false),
    resource!("rbac.authorization.k8s.io", "ClusterRoleBinding", "clusterrolebindings",
        "clusterrolebinding", namespaced: false, short: NONE, cat: NONE, sub: &[],
        cols: table::ROLE_BINDING, gen: false),
    resource!("rbac.authorization.k8s.io", "Role", "roles", "role", namespaced: true,
        short: NONE, cat: NONE, sub: &[], cols: table::ROLE, gen: false),
    resource!("rbac.authorization.k8s.io", "RoleBinding", "rolebindings", "rolebinding",
        namespaced: true, short: NONE, cat: NONE, sub: &[], cols: table::ROLE_BINDING, gen: false),
    Resource {
        after_write: Some(super::crd::after_write),
        ..resource!("apiextensions.k8s.io", "CustomResourceDefinition",
            "customresourcedefinitions", "customresourcedefinition", namespaced: false,
            short: &["crd", "crds"], cat: NONE, sub: STATUS,
            cols: table::CUSTOM_RESOURCE_DEFINITION, gen: true)
    },
    review(
        "authorization.k8s.io",
        "SelfSubjectAccessReview",
        "selfsubjectaccessreviews",
        "selfsubjectaccessreview",
        reviews::self_subject_access_review,
    ),
    review(
        "authorization.k8s.io",
        "SelfSubjectRulesReview",
        "selfsubjectrulesreviews",
        "selfsubjectrulesreview",
        reviews::self_subject_rules_review,
    ),
    review(
        "authentication.k8s.io",
        "SelfSubjectReview",
        "selfsubjectreviews",
        "selfsubjectreview",
        reviews::self_subject_review,
    ),
    review(
        "authorization.k8s.io",
        "SubjectAccessReview",
        "subjectaccessreviews",
        "subjectaccessreview",
        subject_reviews::subject_access_review,
    ),
    Resource {
        namespaced: true,
        ..review(
            "authorization.k8s.io",
            "LocalSubjectAccessReview",
            "localsubjectaccessreviews",
            "localsubjectaccessreview",
            subject_reviews::local_subject_access_review,
        )
    },
    review(
        "authentication.k8s.io",
        "TokenReview",
        "tokenreviews",
        "tokenreview",
        subject_reviews::token_review,
    ),
];

/// Looks a built-in resource up by group, version and plural.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Resources defined at run time (custom resources from CRDs), shared by every request of one
/// server. Entries are `'static` (leaked once per distinct definition, see `crd`), so requests
/// can hold them without locking.
#[derive(Clone, Debug, Default)]
pub struct Custom(std::sync::Arc<std::sync::RwLock<Vec<&'static Resource>>>);

impl Custom {
    pub fn snapshot(&self) -> Vec<&'static Resource> {
        // A poisoned lock only means a writer panicked; the last list is still coherent.
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn replace(&self, resources: Vec<&'static Resource>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = resources;
    }
}

/// Built-in and custom resources, built-ins first.
pub fn all(custom: &[&'static Resource]) -> Vec<&'static Resource> {
    RESOURCES.iter().chain(custom.iter().copied()).collect()
}

/// Looks a built-in or custom resource up.
pub fn find_any(
    custom: &[&'static Resource],
    group: &str,
    version: &str,
    plural: &str,
) -> Option<&'static Resource> {
    all(custom)
        .into_iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The named groups in discovery order, each with its versions (the first is preferred).
pub fn groups(custom: &[&'static Resource]) -> Vec<(&'static str, Vec<&'static str>)> {
    let mut out: Vec<(&str, Vec<&str>)> = Vec::new();
    for r in all(custom).into_iter().filter(|r| !r.group.is_empty()) {
        match out.iter_mut().find(|(g, _)| *g == r.group) {
            Some((_, versions)) if !versions.contains(&r.version) => versions.push(r.version),
            Some(_) => {}
            None => out.push((r.group, vec![r.version])),
        }
    }
    out
}

/// Resources of one group-version.
pub fn in_group_version(
    custom: &[&'static Resource],
    group: &str,
    version: &str,
) -> Vec<&'static Resource> {
    all(custom)
        .into_iter()
        .filter(|r| r.group == group && r.version == version)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_group_prefixed_and_namespace_scoped() {
        let cm = find("", "v1", "configmaps").expect("configmaps");
        assert_eq!(
            cm.key(Some("default"), "x"),
            "/registry/configmaps/default/x"
        );
        let deploy = find("apps", "v1", "deployments").expect("deployments");
        assert_eq!(
            deploy.list_prefix(Some("a")),
            "/registry/apps/deployments/a/"
        );
        let ns = find("", "v1", "namespaces").expect("namespaces");
        assert_eq!(
            ns.key(Some("ignored"), "default"),
            "/registry/namespaces/default"
        );
    }

    #[test]
    fn plurals_are_unique_per_group() {
        for (i, a) in RESOURCES.iter().enumerate() {
            for b in &RESOURCES[i + 1..] {
                assert!(
                    !(a.group == b.group && a.plural == b.plural),
                    "{}",
                    a.plural
                );
            }
        }
    }
}
