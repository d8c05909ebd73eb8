//! `JoinToken`: a request for a credential that lets worker nodes join a
//! tenant cluster with a stock `kubeadm join`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A bootstrap token in a tenant cluster, with the join command that uses it.
/// Deleting the JoinToken revokes the token.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "kok.dev",
    version = "v1alpha1",
    kind = "JoinToken",
    doc = "A join credential for worker nodes of a TenantCluster: kok creates a bootstrap token with a TTL in the tenant and writes a Secret beside this object with the `kubeadm join` command and a bootstrap kubeconfig. Deleting it revokes the token.",
    namespaced,
    shortname = "jt",
    category = "kok",
    status = "JoinTokenStatus",
    printcolumn = r#"{"name":"Tenant","type":"string","jsonPath":".spec.tenantCluster"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Expires","type":"string","jsonPath":".status.expirationTime"}"#,
    printcolumn = r#"{"name":"Secret","type":"string","jsonPath":".status.secretName"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct JoinTokenSpec {
    /// The TenantCluster (same namespace) the nodes join.
    #[schemars(length(min = 1, max = 63))]
    pub tenant_cluster: String,
    /// How long the token is valid after kok creates it (default 86400, one
    /// day, as kubeadm's; at least 10, at most 604800). Changing it later
    /// does not change a token already issued: create a new JoinToken.
    #[serde(default = "default_ttl_seconds")]
    #[schemars(range(min = 10, max = 604800))]
    pub ttl_seconds: i64,
    /// A note stored on the bootstrap token in the tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 200))]
    pub description: Option<String>,
}

fn default_ttl_seconds() -> i64 {
    86_400
}

/// Where a join credential is in its life.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum JoinTokenPhase {
    /// Waiting for the tenant to serve.
    Pending,
    /// The token works; the Secret holds the join command.
    Ready,
    /// The token's TTL passed: the tenant apiserver refuses it.
    Expired,
    /// The spec cannot be served (e.g. no such TenantCluster).
    Failed,
}

/// Observed state, following kstatus.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JoinTokenStatus {
    /// The generation the conditions describe (kstatus).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Reconciling`, `Stalled`.
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// `Pending`, `Ready`, `Expired` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<JoinTokenPhase>,
    /// The public half of the token (`<id>.<secret>`): the tenant's Secret
    /// is `kube-system/bootstrap-token-<id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    /// When the token stops working.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration_time: Option<Time>,
    /// The Secret (same namespace) with keys `joinCommand`, `token`,
    /// `caCertHash`, `endpoint` and `bootstrap-kubeconfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// The apiserver address in the join command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}
