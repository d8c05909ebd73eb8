//! `kubectl kok`: the everyday operations on TenantClusters from a shell.
//! On PATH as `kubectl-kok`, kubectl runs it as `kubectl kok ...`; it talks
//! to the cluster of the current kubeconfig context, like kubectl.

use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use clap::{CommandFactory, Parser, Subcommand};
use k8s_openapi::api::core::v1::Secret;
use kok_crds::{
    BackupPhase, EtcdBackup, EtcdRestore, JoinToken, JoinTokenPhase, RestorePhase, TenantCluster,
};
use kok_templates::upgrade_plan::{plan, EtcdVersion, Versions};
use kok_templates::version::KubeVersion;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

/// kubectl kok: TenantClusters from the command line.
#[derive(Parser, Debug)]
#[command(name = "kubectl-kok", bin_name = "kubectl kok", version, about)]
struct Cli {
    /// Namespace of the TenantCluster (default: the context's).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Print the tenant's admin kubeconfig (`> tenant.kubeconfig`).
    Kubeconfig { name: String },
    /// Conditions, versions, the upgrade or migration, findings, repairs, the last backup.
    Status { name: String },
    /// Take an EtcdBackup now and wait for it.
    Backup {
        name: String,
        /// The EtcdBackup's name (default `<tenant>-<unix time>`).
        #[arg(long)]
        backup_name: Option<String>,
        /// Return once it is created, without waiting.
        #[arg(long)]
        no_wait: bool,
    },
    /// Restore the tenant from an EtcdBackup (stops its control plane
    /// meanwhile) and wait for it.
    Restore {
        name: String,
        /// The EtcdBackup to restore.
        #[arg(long = "from")]
        from: String,
        #[arg(long)]
        no_wait: bool,
    },
    /// Upgrade to a Kubernetes version: print the plan kok will walk; without
    /// --dry-run, also set spec.version.
    Upgrade {
        name: String,
        #[arg(long)]
        to: String,
        #[arg(long)]
        dry_run: bool,
    },
    /// Ask kok for a join credential (a JoinToken) and print the `kubeadm
    /// join` command worker nodes run; delete the JoinToken to revoke it.
    Join {
        name: String,
        /// How long the token works, in seconds (default one day).
        #[arg(long, default_value_t = 86_400)]
        ttl_seconds: i64,
        /// The JoinToken's name (default `<tenant>-<random>`).
        #[arg(long)]
        token_name: Option<String>,
    },
    /// Print shell completions (bash, zsh, fish, ...).
    Completions { shell: clap_complete::Shell },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Cmd::Completions { shell } = &cli.command {
        clap_complete::generate(
            *shell,
            &mut Cli::command(),
            "kubectl-kok",
            &mut std::io::stdout(),
        );
        return Ok(());
    }
    let client = Client::try_default()
        .await
        .context("connecting to the cluster of the current kubeconfig context")?;
    let ns = cli
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let tenants: Api<TenantCluster> = Api::namespaced(client.clone(), &ns);
    let get = |name: String| {
        let tenants = tenants.clone();
        let ns = ns.clone();
        async move {
            tenants
                .get_opt(&name)
                .await?
                .ok_or_else(|| anyhow!("TenantCluster {ns}/{name} not found"))
        }
    };
    match cli.command {
        Cmd::Kubeconfig { name } => {
            let tc = get(name.clone()).await?;
            let secret = tc
                .status
                .and_then(|s| s.kubeconfig_secret_name)
                .ok_or_else(|| anyhow!("{name} has no kubeconfig yet (not provisioned)"))?;
            let s = Api::<Secret>::namespaced(client, &ns).get(&secret).await?;
            let value = s
                .data
                .and_then(|mut d| d.remove("value"))
                .ok_or_else(|| anyhow!("Secret {secret} has no key `value`"))?;
            print!("{}", String::from_utf8(value.0)?);
        }
        Cmd::Status { name } => print!("{}", status_text(&get(name).await?)),
        Cmd::Backup {
            name,
            backup_name,
            no_wait,
        } => {
            get(name.clone()).await?;
            let backup_name = backup_name.unwrap_or_else(|| {
                format!(
                    "{name}-{}",
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or_default()
                )
            });
            let backups: Api<EtcdBackup> = Api::namespaced(client, &ns);
            let eb: EtcdBackup = serde_json::from_value(json!({
                "apiVersion": "kok.dev/v1alpha1", "kind": "EtcdBackup",
                "metadata": {"name": backup_name}, "spec": {"tenantCluster": name}
            }))?;
            backups.create(&PostParams::default(), &eb).await?;
            println!("etcdbackup/{backup_name} created");
            if !no_wait {
                let done = wait(Duration::from_secs(900), || async {
                    let b = backups.get(&backup_name).await?;
                    let s = b.status.unwrap_or_default();
                    Ok(match s.phase {
                        Some(p) if p.is_terminal() => Some((p, s)),
                        _ => None,
                    })
                })
                .await?;
                match done {
                    (BackupPhase::Succeeded, s) => println!(
                        "etcdbackup/{backup_name} succeeded: {} bytes, revision {}, {} keys, verified {}",
                        s.size_bytes.unwrap_or_default(),
                        s.revision.unwrap_or_default(),
                        s.key_count.unwrap_or_default(),
                        s.verified.map(|v| v.to_string()).unwrap_or_else(|| "no".into())
                    ),
                    (_, s) => bail!(
                        "etcdbackup/{backup_name} failed: {}",
                        s.message.unwrap_or_default()
                    ),
                }
            }
        }
        Cmd::Restore {
            name,
            from,
            no_wait,
        } => {
            get(name.clone()).await?;
            let restore_name = format!(
                "{name}-restore-{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or_default()
            );
            let restores: Api<EtcdRestore> = Api::namespaced(client, &ns);
            let er: EtcdRestore = serde_json::from_value(json!({
                "apiVersion": "kok.dev/v1alpha1", "kind": "EtcdRestore",
                "metadata": {"name": restore_name},
                "spec": {"tenantCluster": name, "backup": from}
            }))?;
            restores.create(&PostParams::default(), &er).await?;
            println!("etcdrestore/{restore_name} created");
            if !no_wait {
                let (phase, message) = wait(Duration::from_secs(3600), || async {
                    let r = restores.get(&restore_name).await?;
                    let s = r.status.unwrap_or_default();
                    Ok(match s.phase {
                        Some(p @ (RestorePhase::Completed | RestorePhase::Failed)) => {
                            Some((p, s.message.unwrap_or_default()))
                        }
                        _ => None,
                    })
                })
                .await?;
                if phase == RestorePhase::Failed {
                    bail!("etcdrestore/{restore_name} failed: {message}");
                }
                println!("etcdrestore/{restore_name} completed: {message}");
            }
        }
        Cmd::Upgrade { name, to, dry_run } => {
            let tc = get(name.clone()).await?;
            println!("{}", upgrade_plan_text(&tc, &to)?);
            if !dry_run {
                tenants
                    .patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"version": to}})),
                    )
                    .await?;
                println!("tenantcluster/{name} spec.version set to {to}; follow it with `kubectl kok status {name}`");
            }
        }
        Cmd::Join {
            name,
            ttl_seconds,
            token_name,
        } => {
            get(name.clone()).await?;
            let tokens: Api<JoinToken> = Api::namespaced(client.clone(), &ns);
            let mut metadata = json!({});
            match &token_name {
                Some(n) => metadata["name"] = json!(n),
                None => metadata["generateName"] = json!(format!("{name}-")),
            }
            let jt: JoinToken = serde_json::from_value(json!({
                "apiVersion": "kok.dev/v1alpha1", "kind": "JoinToken",
                "metadata": metadata,
                "spec": {"tenantCluster": name, "ttlSeconds": ttl_seconds}
            }))?;
            let created = tokens.create(&PostParams::default(), &jt).await?;
            let jt_name = created.name_any();
            eprintln!("jointoken/{jt_name} created; waiting for the token...");
            let secret = wait(Duration::from_secs(120), || async {
                let jt = tokens.get(&jt_name).await?;
                let s = jt.status.unwrap_or_default();
                match s.phase {
                    Some(JoinTokenPhase::Ready) => Ok(s.secret_name),
                    Some(JoinTokenPhase::Failed) => bail!(
                        "jointoken/{jt_name} failed: {}",
                        s.conditions
                            .iter()
                            .find(|c| c.type_ == "Ready")
                            .map(|c| c.message.clone())
                            .unwrap_or_default()
                    ),
                    _ => Ok(None),
                }
            })
            .await?;
            let s = Api::<Secret>::namespaced(client, &ns).get(&secret).await?;
            let command = s
                .data
                .and_then(|mut d| d.remove("joinCommand"))
                .ok_or_else(|| anyhow!("Secret {secret} has no key `joinCommand`"))?;
            println!("{}", String::from_utf8(command.0)?);
            eprintln!("revoke it with: kubectl -n {ns} delete jointoken {jt_name}");
        }
        Cmd::Completions { .. } => unreachable!("handled before connecting"),
    }
    Ok(())
}

/// Polls `check` every second until it returns a value or `timeout` passes.
async fn wait<T, F, Fut>(timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            bail!("gave up after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The plan from what runs to `to`, as kok would walk it.
fn upgrade_plan_text(tc: &TenantCluster, to: &str) -> anyhow::Result<String> {
    let status = tc.status.clone().unwrap_or_default();
    let running_kube: KubeVersion = status
        .version
        .as_deref()
        .unwrap_or(&tc.spec.version)
        .parse()
        .map_err(|e| anyhow!("running version: {e}"))?;
    let target = KubeVersion::parse_supported(to).map_err(|e| anyhow!("--to {to}: {e}"))?;
    let running_etcd = status
        .etcd_version
        .as_deref()
        .and_then(|v| v.parse::<EtcdVersion>().ok())
        .unwrap_or_else(|| EtcdVersion::paired_with(running_kube));
    let pinned = tc
        .spec
        .etcd
        .version
        .as_deref()
        .and_then(|v| v.parse::<EtcdVersion>().ok());
    let steps = plan(
        Versions {
            kube: running_kube,
            etcd: running_etcd,
        },
        target,
        pinned,
    )
    .map_err(|e| anyhow!("{e}"))?;
    let mut out = format!(
        "{}: {running_kube} (etcd {running_etcd}) -> {target}, strategy {:?}\n",
        tc.name_any(),
        tc.spec.upgrade.strategy
    );
    if steps.is_empty() {
        out.push_str("nothing to do\n");
    }
    for (i, s) in steps.iter().enumerate() {
        let parts: Vec<String> = s.components.iter().map(|c| format!("{c:?}")).collect();
        out.push_str(&format!("step {}: {s}: {}\n", i + 1, parts.join(" -> ")));
    }
    if tc.spec.upgrade.backup_first && !steps.is_empty() {
        out.push_str("an EtcdBackup is taken and must succeed before the first step\n");
    }
    Ok(out)
}

fn status_text(tc: &TenantCluster) -> String {
    let s = tc.status.clone().unwrap_or_default();
    let mut out = format!(
        "TenantCluster {}/{}: spec {} running {} etcd {} ({} members)\n",
        tc.namespace().unwrap_or_default(),
        tc.name_any(),
        tc.spec.version,
        s.version.as_deref().unwrap_or("-"),
        s.etcd_version.as_deref().unwrap_or("-"),
        s.etcd_replicas.unwrap_or(tc.spec.etcd.replicas)
    );
    if let Some(e) = &s.endpoint {
        out.push_str(&format!("endpoint: {e}\n"));
    }
    if let Some(n) = &s.nodes {
        let kubelets = n
            .kubelet_versions
            .iter()
            .map(|(v, c)| format!("{c}x {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        out.push_str(&format!(
            "nodes: {} ready; kubelets: {kubelets}\n",
            n.summary
        ));
        if !n.not_ready.is_empty() {
            out.push_str(&format!("  not ready: {}\n", n.not_ready.join(", ")));
        }
    }
    out.push_str("conditions:\n");
    for c in &s.conditions {
        out.push_str(&format!(
            "  {:<24} {:<6} {:<22} {}\n",
            c.type_, c.status, c.reason, c.message
        ));
    }
    if let Some(u) = &s.upgrade {
        out.push_str(&format!(
            "upgrade: {} -> {}, {} (step {} of {}: {})\n",
            u.from,
            u.to,
            u.phase,
            u.step + 1,
            u.plan.len(),
            u.plan.join(", ")
        ));
    }
    if let Some(m) = &s.migration {
        out.push_str(&format!(
            "migration: {} ({})\n",
            m.phase,
            m.message.as_deref().unwrap_or("")
        ));
    }
    if let Some(b) = &s.backup {
        out.push_str(&format!(
            "last successful backup: {}\n",
            b.last_successful_backup.as_deref().unwrap_or("none")
        ));
    }
    match &s.inspection {
        Some(i) => out.push_str(&format!(
            "inspection: {} checks at {}; {} finding(s)\n",
            i.checks,
            i.last_time
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_default(),
            s.findings.len()
        )),
        None => out.push_str("inspection: not yet\n"),
    }
    for f in &s.findings {
        out.push_str(&format!(
            "  {:<8} {:<26} {}: {}{}\n",
            f.severity,
            f.check,
            f.object,
            f.message,
            f.repair
                .as_ref()
                .map(|r| format!(" [{r}]"))
                .unwrap_or_default()
        ));
    }
    if !s.repairs.is_empty() {
        out.push_str("repairs:\n");
        for r in &s.repairs {
            out.push_str(&format!(
                "  {} {} {}: {} ({})\n",
                r.time.0, r.check, r.object, r.action, r.outcome
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(yaml: &str) -> TenantCluster {
        let mut v: serde_json::Value = serde_json::from_str(yaml).unwrap();
        v["apiVersion"] = json!("kok.dev/v1alpha1");
        v["kind"] = json!("TenantCluster");
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn an_upgrade_plan_walks_every_minor_and_names_the_backup() {
        let tc = tenant(
            r#"{"metadata": {"name": "demo", "namespace": "ns"},
                "spec": {"version": "v1.20.2"},
                "status": {"version": "v1.20.2", "etcdVersion": "3.4.13-0"}}"#,
        );
        let text = upgrade_plan_text(&tc, "v1.22.3").unwrap();
        assert!(text.contains("step 1: v1.21."), "{text}");
        assert!(text.contains("step 2: v1.22.3"), "{text}");
        assert!(text.contains("EtcdBackup"), "{text}");
        assert!(upgrade_plan_text(&tc, "v1.19.0").is_err());
        assert!(upgrade_plan_text(&tc, "v1.20.2")
            .unwrap()
            .contains("nothing to do"));
    }

    #[test]
    fn status_shows_conditions_and_findings() {
        let tc = tenant(
            r#"{"metadata": {"name": "demo", "namespace": "ns"},
                "spec": {"version": "v1.20.2"},
                "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Ready",
                            "message": "serving", "lastTransitionTime": "2026-12-02T00:00:00Z"}],
                           "findings": [{"check": "PodOnMissingNode", "severity": "Warning",
                             "object": "Pod default/x", "message": "bound to gone",
                             "firstSeen": "2026-12-02T00:00:00Z", "lastSeen": "2026-12-02T00:00:00Z",
                             "count": 1, "policy": "Repair"}]}}"#,
        );
        let text = status_text(&tc);
        assert!(text.contains("Ready"), "{text}");
        assert!(text.contains("PodOnMissingNode"), "{text}");
        assert!(text.contains("inspection: not yet"), "{text}");
    }
}
