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
    /// The kubeconfig file (default: KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true, value_name = "PATH")]
    kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context (default: its current context).
    #[arg(long, global = true, value_name = "NAME")]
    context: Option<String>,
    /// How to print the object a command shows or makes (status, backup,
    /// restore, join): text for people, json or yaml for scripts (then
    /// progress and notes go to stderr only).
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    Text,
    Json,
    Yaml,
}

/// The object as `-o json` or `-o yaml` prints it.
fn render<T: serde::Serialize>(object: &T, output: Output) -> anyhow::Result<String> {
    Ok(match output {
        Output::Json => serde_json::to_string_pretty(object)? + "\n",
        Output::Yaml => serde_yaml::to_string(object)?,
        Output::Text => bail!("text is printed by each command"),
    })
}

/// The client for `--kubeconfig` and `--context`, as kubectl would pick it.
async fn client(cli: &Cli) -> anyhow::Result<Client> {
    let options = kube::config::KubeConfigOptions {
        context: cli.context.clone(),
        ..Default::default()
    };
    let config = match &cli.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading --kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?
        }
        None if cli.context.is_some() => kube::Config::from_kubeconfig(&options).await?,
        None => kube::Config::infer().await?,
    };
    Client::try_from(config).context("connecting to the cluster")
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
    // kubectl (1.26 and later) completes `kubectl kok ...` by running
    // `kubectl_complete-kok` with the words typed so far.
    let invoked_as = std::env::args().next().unwrap_or_default();
    if invoked_as.rsplit('/').next() == Some("kubectl_complete-kok") {
        let words: Vec<String> = std::env::args().skip(1).collect();
        print!("{}", kubectl_completion(&words).await);
        return Ok(());
    }
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
    let client = client(&cli).await?;
    let output = cli.output;
    // With -o json|yaml, stdout holds only the object.
    let note = |line: String| {
        if output == Output::Text {
            println!("{line}");
        } else {
            eprintln!("{line}");
        }
    };
    if output != Output::Text && matches!(cli.command, Cmd::Kubeconfig { .. } | Cmd::Upgrade { .. })
    {
        bail!("-o {output:?} is for commands that print an object: status, backup, restore, join");
    }
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
        Cmd::Status { name } => {
            let tc = get(name).await?;
            match output {
                Output::Text => print!("{}", status_text(&tc)),
                _ => print!("{}", render(&tc, output)?),
            }
        }
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
            let created = backups.create(&PostParams::default(), &eb).await?;
            note(format!("etcdbackup/{backup_name} created"));
            if no_wait && output != Output::Text {
                print!("{}", render(&created, output)?);
            }
            if !no_wait {
                let progress =
                    std::cell::RefCell::new(Progress::new(format!("etcdbackup/{backup_name}")));
                let (done, object) = wait(Duration::from_secs(900), || async {
                    let b = backups.get(&backup_name).await?;
                    let s = b.status.clone().unwrap_or_default();
                    progress
                        .borrow_mut()
                        .saw(s.phase.map(|p| format!("{p:?}")), s.message.as_deref());
                    Ok(match s.phase {
                        Some(p) if p.is_terminal() => Some(((p, s), b)),
                        _ => None,
                    })
                })
                .await?;
                if output != Output::Text {
                    print!("{}", render(&object, output)?);
                }
                match done {
                    (BackupPhase::Succeeded, s) => note(format!(
                        "etcdbackup/{backup_name} succeeded: {} bytes, revision {}, {} keys, verified {}",
                        s.size_bytes.unwrap_or_default(),
                        s.revision.unwrap_or_default(),
                        s.key_count.unwrap_or_default(),
                        s.verified.map(|v| v.to_string()).unwrap_or_else(|| "no".into())
                    )),
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
            let created = restores.create(&PostParams::default(), &er).await?;
            note(format!("etcdrestore/{restore_name} created"));
            if no_wait && output != Output::Text {
                print!("{}", render(&created, output)?);
            }
            if !no_wait {
                let progress =
                    std::cell::RefCell::new(Progress::new(format!("etcdrestore/{restore_name}")));
                let ((phase, message), object) = wait(Duration::from_secs(3600), || async {
                    let r = restores.get(&restore_name).await?;
                    let s = r.status.clone().unwrap_or_default();
                    progress
                        .borrow_mut()
                        .saw(s.phase.map(|p| format!("{p:?}")), s.message.as_deref());
                    Ok(match s.phase {
                        Some(p @ (RestorePhase::Completed | RestorePhase::Failed)) => {
                            Some(((p, s.message.unwrap_or_default()), r))
                        }
                        _ => None,
                    })
                })
                .await?;
                if output != Output::Text {
                    print!("{}", render(&object, output)?);
                }
                if phase == RestorePhase::Failed {
                    bail!("etcdrestore/{restore_name} failed: {message}");
                }
                note(format!("etcdrestore/{restore_name} completed: {message}"));
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
            let command = String::from_utf8(command.0)?;
            match output {
                Output::Text => println!("{command}"),
                _ => {
                    let jt = tokens.get(&jt_name).await?;
                    print!(
                        "{}",
                        render(
                            &json!({"joinToken": jt, "joinCommand": command.trim()}),
                            output
                        )?
                    );
                }
            }
            eprintln!("revoke it with: kubectl -n {ns} delete jointoken {jt_name}");
        }
        Cmd::Completions { .. } => unreachable!("handled before connecting"),
    }
    Ok(())
}

/// Progress of a wait on stderr: a line each time the phase or message
/// changes, with the seconds since the wait began.
struct Progress {
    what: String,
    start: std::time::Instant,
    last: Option<String>,
}

impl Progress {
    fn new(what: String) -> Self {
        Self {
            what,
            start: std::time::Instant::now(),
            last: None,
        }
    }

    fn saw(&mut self, phase: Option<String>, message: Option<&str>) {
        if let Some(line) = progress_line(&self.what, phase.as_deref(), message) {
            if self.last.as_deref() != Some(line.as_str()) {
                eprintln!("[{:>4}s] {line}", self.start.elapsed().as_secs());
                self.last = Some(line);
            }
        }
    }
}

fn progress_line(what: &str, phase: Option<&str>, message: Option<&str>) -> Option<String> {
    let phase = phase?;
    Some(match message.filter(|m| !m.is_empty()) {
        Some(m) => format!("{what}: {phase}: {m}"),
        None => format!("{what}: {phase}"),
    })
}

/// The answer to `kubectl_complete-kok WORDS...` (cobra's protocol, which
/// kubectl follows): one candidate per line, then `:4` (no file names).
/// The last word is the one being completed; tenant names are listed from
/// the cluster for the commands that take one.
async fn kubectl_completion(words: &[String]) -> String {
    let (typed, partial) = match words.split_last() {
        Some((last, before)) => (before.to_vec(), last.clone()),
        None => (vec![], String::new()),
    };
    let tenants = if wants_tenant_name(&typed) {
        tenant_names(&typed).await
    } else {
        vec![]
    };
    let mut out: String = candidates(&typed, &partial, &tenants)
        .into_iter()
        .map(|c| c + "\n")
        .collect();
    out.push_str(":4\n");
    out
}

/// Subcommands and flags of the command typed so far, and tenant names
/// where one goes, that start with `partial`.
fn candidates(typed: &[String], partial: &str, tenants: &[String]) -> Vec<String> {
    let root = Cli::command();
    let sub = typed
        .iter()
        .find_map(|w| root.get_subcommands().find(|c| c.get_name() == w));
    let mut out: Vec<String> = Vec::new();
    if partial.starts_with('-') {
        let flags = root
            .get_arguments()
            .chain(sub.into_iter().flat_map(|c| c.get_arguments()));
        for a in flags {
            if let Some(long) = a.get_long() {
                out.push(format!("--{long}"));
            }
        }
    } else {
        match sub {
            None => out.extend(
                root.get_subcommands()
                    .filter(|c| c.get_name() != "help")
                    .map(|c| c.get_name().to_string()),
            ),
            Some(_) => out.extend(tenants.iter().cloned()),
        }
    }
    out.retain(|c| c.starts_with(partial));
    out.sort();
    out.dedup();
    out
}

/// Whether the next word is a tenant name: a subcommand that takes one is
/// typed and its name is not yet (a flag's value is not a name).
fn wants_tenant_name(typed: &[String]) -> bool {
    let root = Cli::command();
    let Some(at) = typed.iter().position(|w| {
        root.get_subcommands()
            .any(|c| c.get_name() == w && w != "completions")
    }) else {
        return false;
    };
    let takes_value = |flag: &str| {
        root.get_arguments()
            .chain(root.get_subcommands().flat_map(|c| c.get_arguments()))
            .any(|a| {
                let named = a.get_long().is_some_and(|l| flag == format!("--{l}"))
                    || a.get_short().is_some_and(|s| flag == format!("-{s}"));
                named && a.get_action().takes_values()
            })
    };
    let mut words = typed[at + 1..].iter();
    while let Some(w) = words.next() {
        if !w.starts_with('-') {
            return false;
        }
        if !w.contains('=') && takes_value(w) {
            words.next();
        }
    }
    true
}

/// The value of a flag typed as `--flag value`, `--flag=value` or `-f value`.
fn typed_flag(typed: &[String], long: &str, short: Option<&str>) -> Option<String> {
    let mut words = typed.iter();
    while let Some(w) = words.next() {
        if let Some(v) = w.strip_prefix(&format!("--{long}=")) {
            return Some(v.to_string());
        }
        if *w == format!("--{long}") || short.is_some_and(|s| w == s) {
            return words.next().cloned();
        }
    }
    None
}

/// TenantCluster names in the namespace `-n` names (or the context's), on
/// the cluster `--kubeconfig` and `--context` name; none when it does not
/// answer: completion never fails loudly.
async fn tenant_names(typed: &[String]) -> Vec<String> {
    let cli = Cli {
        namespace: typed_flag(typed, "namespace", Some("-n")),
        kubeconfig: typed_flag(typed, "kubeconfig", None).map(Into::into),
        context: typed_flag(typed, "context", None),
        output: Output::Text,
        command: Cmd::Completions {
            shell: clap_complete::Shell::Bash,
        },
    };
    let Ok(client) = client(&cli).await else {
        return vec![];
    };
    let ns = cli
        .namespace
        .unwrap_or_else(|| client.default_namespace().to_string());
    let list = tokio::time::timeout(
        Duration::from_secs(5),
        Api::<TenantCluster>::namespaced(client, &ns).list(&Default::default()),
    )
    .await;
    match list {
        Ok(Ok(l)) => l.items.iter().map(|t| t.name_any()).collect(),
        _ => vec![],
    }
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

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn completion_offers_commands_flags_and_tenant_names() {
        let tenants = words(&["demo", "prod"]);
        assert_eq!(
            candidates(&[], "st", &tenants),
            words(&["status"]),
            "a command first"
        );
        assert!(candidates(&[], "", &tenants).contains(&"backup".to_string()));
        assert_eq!(
            candidates(&words(&["status"]), "p", &tenants),
            words(&["prod"])
        );
        let flags = candidates(&words(&["backup", "demo"]), "--", &tenants);
        for f in [
            "--backup-name",
            "--no-wait",
            "--context",
            "--kubeconfig",
            "--output",
        ] {
            assert!(flags.contains(&f.to_string()), "{f} in {flags:?}");
        }
        assert!(wants_tenant_name(&words(&["-n", "x", "status"])));
        assert!(!wants_tenant_name(&words(&["status", "demo"])));
        assert!(wants_tenant_name(&words(&[
            "backup",
            "--backup-name",
            "b1"
        ])));
        assert!(wants_tenant_name(&words(&[
            "backup",
            "--backup-name=b1",
            "--no-wait"
        ])));
        assert!(!wants_tenant_name(&words(&["backup", "--no-wait", "demo"])));
        let typed = words(&["--namespace=team", "--context", "prod", "status"]);
        assert_eq!(
            typed_flag(&typed, "namespace", Some("-n")).as_deref(),
            Some("team")
        );
        assert_eq!(typed_flag(&typed, "context", None).as_deref(), Some("prod"));
        let short = words(&["-n", "x"]);
        assert_eq!(
            typed_flag(&short, "namespace", Some("-n")).as_deref(),
            Some("x")
        );
        assert!(!wants_tenant_name(&words(&["completions"])));
    }

    #[test]
    fn objects_print_as_json_or_yaml() {
        let tc = tenant(
            r#"{"metadata": {"name": "demo", "namespace": "ns"}, "spec": {"version": "v1.20.2"}}"#,
        );
        let j: serde_json::Value =
            serde_json::from_str(&render(&tc, Output::Json).unwrap()).unwrap();
        assert_eq!(j["metadata"]["name"], "demo");
        assert_eq!(j["kind"], "TenantCluster");
        let y: serde_json::Value =
            serde_yaml::from_str(&render(&tc, Output::Yaml).unwrap()).unwrap();
        assert_eq!(y["spec"]["version"], "v1.20.2");
    }

    #[test]
    fn progress_lines_name_the_object_phase_and_message() {
        assert_eq!(progress_line("etcdbackup/b", None, None), None);
        assert_eq!(
            progress_line("etcdbackup/b", Some("Running"), Some("streaming")).unwrap(),
            "etcdbackup/b: Running: streaming"
        );
        assert_eq!(
            progress_line("etcdbackup/b", Some("Pending"), Some("")).unwrap(),
            "etcdbackup/b: Pending"
        );
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
