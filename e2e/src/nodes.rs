//! Worker nodes for tenants: a join credential from kok, a lab node on this
//! machine (`hack/tenant-node`) that joins with nothing but the published
//! command, and kubectl against the tenant.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kok_crds::{JoinToken, JoinTokenPhase};
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::json;

use crate::{tenant, wait_for, Poll};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A JoinToken for `tenant_name`; waits for it and returns the join command.
pub async fn request_join(
    client: &Client,
    ns: &str,
    token_name: &str,
    tenant_name: &str,
    ttl_seconds: i64,
) -> String {
    let api: Api<JoinToken> = Api::namespaced(client.clone(), ns);
    let jt: JoinToken = serde_json::from_value(json!({
        "apiVersion": "kok.dev/v1alpha1", "kind": "JoinToken",
        "metadata": {"name": token_name},
        "spec": {"tenantCluster": tenant_name, "ttlSeconds": ttl_seconds}
    }))
    .expect("valid JoinToken");
    api.create(&PostParams::default(), &jt)
        .await
        .unwrap_or_else(|e| panic!("creating JoinToken {ns}/{token_name}: {e}"));
    let secret = wait_for(
        &format!("JoinToken {ns}/{token_name} Ready"),
        Duration::from_secs(120),
        || async {
            match api.get_opt(token_name).await {
                Ok(Some(jt)) => {
                    let s = jt.status.unwrap_or_default();
                    match (s.phase, s.secret_name) {
                        (Some(JoinTokenPhase::Ready), Some(secret)) => Poll::Ready(secret),
                        (phase, _) => Poll::Pending(format!("{phase:?} {:?}", s.conditions)),
                    }
                }
                other => Poll::Pending(format!("{other:?}")),
            }
        },
    )
    .await;
    tenant::secret_text(client, ns, &secret, "joinCommand").await
}

/// Lab nodes made by a test, removed when it ends (passed or not).
pub struct LabNodes(pub Vec<String>);

impl Drop for LabNodes {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new(repo().join("hack/tenant-node"))
                .args(["remove", n])
                .output();
        }
    }
}

/// A node name no other test on this machine uses.
pub fn node_name(ns: &str, i: usize) -> String {
    // The namespace's random tail keeps runs apart; short for interface names.
    let tail: String = ns
        .chars()
        .rev()
        .take(7)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("w{tail}-{i}")
}

/// Runs `hack/tenant-node add NAME -- <join command>`.
pub fn add_node(name: &str, join_command: &str) -> Output {
    let mut cmd = Command::new(repo().join("hack/tenant-node"));
    cmd.args(["add", name, "--"]);
    cmd.args(join_command.split_whitespace());
    cmd.output().expect("running hack/tenant-node")
}

/// Adds a node and panics with its output when it does not join; returns
/// how long the command took (join -> Node Ready).
pub fn join_node(name: &str, join_command: &str) -> Duration {
    let start = Instant::now();
    let out = add_node(name, join_command);
    assert!(
        out.status.success(),
        "hack/tenant-node add {name} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    start.elapsed()
}

/// Waits until every named node is Ready in the tenant.
pub async fn nodes_ready(tenant_client: &Client, names: &[String], timeout: Duration) {
    let api: Api<Node> = Api::all(tenant_client.clone());
    wait_for("tenant nodes Ready", timeout, || async {
        let mut waiting = Vec::new();
        for n in names {
            let ready = api.get_opt(n).await.ok().flatten().is_some_and(|node| {
                node.status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            });
            if !ready {
                waiting.push(n.clone());
            }
        }
        if waiting.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending(format!("not Ready: {waiting:?}"))
        }
    })
    .await
}

/// The tenant's admin kubeconfig in a file, for kubectl.
pub struct KubeconfigFile(pub tempfile_path::Path);

pub mod tempfile_path {
    /// A file removed on drop.
    pub struct Path(pub std::path::PathBuf);
    impl Drop for Path {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

pub async fn kubeconfig_file(client: &Client, ns: &str, tenant_name: &str) -> KubeconfigFile {
    let text = tenant::secret_text(client, ns, &format!("{tenant_name}-kubeconfig"), "value").await;
    let path = std::env::temp_dir().join(format!("kok-e2e-{ns}-{tenant_name}.kubeconfig"));
    std::fs::write(&path, text).expect("writing the tenant kubeconfig");
    KubeconfigFile(tempfile_path::Path(path))
}

impl KubeconfigFile {
    /// `kubectl --kubeconfig <tenant> ARGS`.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.0 .0)
            .args(args)
            .output()
            .expect("running kubectl")
    }

    /// Like [`Self::kubectl`], panicking with the output on failure.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0 .0
    }
}
