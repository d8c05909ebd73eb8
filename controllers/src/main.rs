//! kok-operator: runs the TenantCluster controller in the management cluster.
//! Every setting is a flag with an environment variable behind it
//! (`kok-operator --help` lists both; so does docs/operator.md).

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use kok_crds::{EtcdBackup, EtcdRestore, JoinToken, TenantCluster};
use kube::api::ListParams;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;
use tracing::{error, info, warn};

use clap::Parser;
use kok_controllers::backup::{self, schedule as backup_schedule};
use kok_controllers::join;
use kok_controllers::restore::{self, member as restore_member};
use kok_controllers::runtime::context::{ArtifactService, BackupsDirectory};
use kok_controllers::runtime::context::{Context, Settings};
use kok_controllers::runtime::leader::LeaderElector;
use kok_controllers::runtime::lenient::{self, Lenient};
use kok_controllers::runtime::telemetry::{self, Health, Metrics};
use kok_controllers::runtime::triggers;
use kok_controllers::storage::serve::{self, signing_key};
use kok_controllers::tenant;

const OPERATOR_NAME: &str = "kok-operator";

/// kok: Kubernetes-on-Kubernetes. Runs tenant control planes declared as
/// TenantClusters in this (management) cluster: provisions, upgrades, backs
/// up, restores and heals them.
#[derive(Parser, Debug)]
#[command(name = "kok-operator", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    #[arg(long, env = "KOK_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: std::net::SocketAddr,
    /// The operator's namespace: the leader Lease lives there, and tenant
    /// etcd NetworkPolicies admit the operator from it.
    #[arg(long, env = "POD_NAMESPACE", default_value = "kok-system")]
    namespace: String,
    /// This replica's identity in the leader Lease (default: the host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Elect a leader among replicas; `false` for a single local replica.
    #[arg(long, env = "KOK_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Log format (the filter is `RUST_LOG`, default `info`).
    #[arg(long, env = "KOK_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// The operator's own image: restore Jobs run it.
    #[arg(long, env = "KOK_IMAGE")]
    image: Option<String>,
    /// The node directory mounted at /var/lib/kok/backups (filesystem
    /// backup destinations; restore Jobs mount it). Empty (the chart's
    /// default): the directory is an emptyDir, which dies with the pod, so
    /// filesystem destinations are refused.
    #[arg(long, env = "KOK_BACKUP_HOST_PATH", default_value = "")]
    backup_host_path: String,
    /// The PersistentVolumeClaim mounted at /var/lib/kok/backups (the
    /// chart's `backups.persistentVolumeClaim`): durable on any node, and
    /// restore Jobs fetch artifacts from the operator's artifact Service.
    #[arg(long, env = "KOK_BACKUP_CLAIM", default_value = "")]
    backup_claim: String,
    /// Where artifacts of the backups claim are served to restore Jobs.
    #[arg(long, env = "KOK_ARTIFACTS_ADDR", default_value = "0.0.0.0:8081")]
    artifacts_addr: std::net::SocketAddr,
    /// The Service (in the operator's namespace) restore Jobs reach the
    /// artifact server through; its port is the one named `artifacts`.
    #[arg(
        long,
        env = "KOK_ARTIFACTS_SERVICE",
        default_value = "kok-operator-artifacts"
    )]
    artifacts_service: String,
    /// The Secret (in the operator's namespace) holding the key that signs
    /// artifact tokens; made at start if missing.
    #[arg(
        long,
        env = "KOK_ARTIFACTS_KEY_SECRET",
        default_value = "kok-artifact-signing"
    )]
    artifacts_key_secret: String,
    /// The node this replica runs on (the downward API's spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Accept http:// S3 endpoints in backup destinations (test servers only).
    #[arg(long, env = "KOK_ALLOW_HTTP_S3", default_value_t = false, action = clap::ArgAction::Set)]
    allow_http_s3: bool,
    /// Private S3 endpoints backup destinations may name (an in-cluster
    /// MinIO): comma-separated address ranges (10.96.0.0/12), addresses and
    /// host names (minio.minio.svc). Empty: private addresses are refused.
    #[arg(long, env = "KOK_S3_PRIVATE_ENDPOINTS", default_value = "",
          value_parser = kok_templates::backup::PrivateEndpoints::parse)]
    s3_private_endpoints: kok_templates::backup::PrivateEndpoints,
    /// Image repositories tenants may run, comma-separated prefixes
    /// (registry.k8s.io, registry.example.com/mirror). Empty: any.
    #[arg(
        long,
        env = "KOK_IMAGE_REPOSITORIES",
        default_value = "",
        value_delimiter = ','
    )]
    image_repositories: Vec<String>,
    /// Namespaces tenants may register Argo CD cluster Secrets in,
    /// comma-separated, `*` matching any run of characters (argocd). Empty:
    /// none, `spec.access.argocd` is refused.
    #[arg(
        long,
        env = "KOK_ARGOCD_NAMESPACES",
        default_value = "",
        value_delimiter = ','
    )]
    argocd_namespaces: Vec<String>,
    /// Let tenants choose any Argo CD cluster name, not only
    /// `<their namespace>-...`.
    #[arg(long, env = "KOK_ARGOCD_FREE_NAMES", default_value_t = false, action = clap::ArgAction::Set)]
    argocd_free_names: bool,
    /// Namespaces whose TenantClusters this operator runs, comma-separated
    /// (the chart's `watchNamespaces`, with Roles only there). Empty: every
    /// namespace, with cluster-wide rights.
    #[arg(
        long,
        env = "KOK_WATCH_NAMESPACES",
        default_value = "",
        value_delimiter = ','
    )]
    watch_namespaces: Vec<String>,
    /// Scratch space for restoring backups into a throwaway etcd (default:
    /// `kok` in the temp dir). etcd binaries for it: `KOK_ETCD`,
    /// `KOK_ETCDUTL`, `KOK_ETCDCTL`, else those on PATH.
    #[arg(long, env = "KOK_WORK_DIR")]
    work_dir: Option<std::path::PathBuf>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Rebuild one etcd member's data from a backup (inside a restore Job;
    /// configured by the Job's KOK_RESTORE_* environment).
    RestoreMember,
    /// Decrypt a sealed backup artifact from stdin to stdout, without kok
    /// running (disaster recovery; docs/runbooks/backup-restore.md).
    DecryptArtifact {
        /// File holding the base64 key (the key Secret's value).
        key_file: std::path::PathBuf,
    },
    /// GET an http:// URL; fail unless it answers 200 with every `--expect`
    /// text in the answer (the chart's `helm test` Pod runs this).
    Probe {
        url: String,
        #[arg(long)]
        expect: Vec<String>,
    },
}

/// Worker threads get 8 MiB of stack: a tenant pass is one deep future (its
/// every step inline), and a debug build's 2 MiB default overflowed.
const WORKER_STACK_BYTES: usize = 8 * 1024 * 1024;

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(WORKER_STACK_BYTES)
        .build()
        .context("starting the async runtime")?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(&cli.log_format);
    match &cli.command {
        // The same binary rebuilds one etcd member inside a restore Job.
        Some(Command::RestoreMember) => return restore_member::run().await,
        Some(Command::DecryptArtifact { key_file }) => {
            let key = kok_controllers::storage::encryption::ArtifactKey::from_base64(
                &std::fs::read(key_file)
                    .with_context(|| format!("reading {}", key_file.display()))?,
            )?;
            kok_controllers::storage::encryption::decrypt_stream(
                std::sync::Arc::new(key),
                &mut std::io::stdin().lock(),
                &mut std::io::stdout().lock(),
            )?;
            return Ok(());
        }
        Some(Command::Probe { url, expect }) => {
            kok_controllers::runtime::probe::check(url, expect, std::time::Duration::from_secs(10))
                .await?;
            println!("{url}: 200, with {expect:?}");
            return Ok(());
        }
        None => {}
    }
    let namespace = cli.namespace.clone();
    let identity = cli
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("{OPERATOR_NAME}-{}", std::process::id()));
    let leader_election = cli.leader_election;
    let metrics_addr = cli.metrics_addr;

    let metrics = Arc::new(Metrics::new());
    let client = counting_client(metrics.clone()).await?;
    let health = Arc::new(Health::default());

    // One shutdown signal for everything: SIGTERM (kubelet) or Ctrl-C.
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("shutdown signal received");
        let _ = shutdown_tx.send(true);
    });
    let listener = tokio::net::TcpListener::bind(metrics_addr)
        .await
        .with_context(|| format!("binding {metrics_addr}"))?;
    tokio::spawn(telemetry::serve(
        listener,
        metrics.clone(),
        health.clone(),
        shutdown(shutdown_rx.clone()),
    ));

    let backups = backups_directory(&cli, &client, &namespace, &shutdown_rx).await?;

    let scopes = watch_scopes(&client, &cli.watch_namespaces).await?;
    info!(namespaces = ?scopes, "watching");

    // Ready means "able to act": a standby is ready to take over, so rollouts of
    // a multi-replica Deployment do not wait for a Lease only one replica can hold.
    health.set_ready(true);

    let reporter = Reporter {
        controller: OPERATOR_NAME.into(),
        instance: Some(identity.clone()),
    };
    // The namespace's labels select the operator in tenant NetworkPolicies
    // (`kubernetes.io/metadata.name` only exists from Kubernetes 1.21 on).
    let namespace_labels = match Api::<Namespace>::all(client.clone()).get(&namespace).await {
        Ok(ns) => ns.metadata.labels.unwrap_or_default(),
        Err(e) => {
            warn!(error = %e, %namespace, "cannot read the operator namespace's labels; NetworkPolicies select it by name");
            BTreeMap::new()
        }
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        Recorder::new(client.clone(), reporter),
        metrics.clone(),
        BTreeMap::from([(
            "app.kubernetes.io/name".to_string(),
            OPERATOR_NAME.to_string(),
        )]),
        namespace.clone(),
        namespace_labels,
        Settings {
            work_dir: cli
                .work_dir
                .clone()
                .unwrap_or_else(|| std::env::temp_dir().join("kok")),
            operator_image: cli.image.clone(),
            backups,
            operator_node: cli.node_name.clone(),
            allow_http_s3: cli.allow_http_s3,
            private_s3: cli.s3_private_endpoints.clone(),
            image_repositories: list_items(&cli.image_repositories),
            argocd: kok_templates::argocd::ArgoPolicy {
                namespaces: list_items(&cli.argocd_namespaces),
                free_names: cli.argocd_free_names,
            },
        },
    ));
    let elector = LeaderElector::new(client.clone(), &namespace, OPERATOR_NAME, &identity);
    loop {
        if leader_election {
            tokio::select! {
                acquired = elector.acquire() => acquired.context("acquiring the leader lease")?,
                _ = shutdown(shutdown_rx.clone()) => break,
            }
            info!(%identity, "leading");
        }
        metrics.set_leader(true);
        let controllers = futures::future::join_all(scopes.iter().map(|scope| {
            run_controllers(
                client.clone(),
                ctx.clone(),
                shutdown_rx.clone(),
                scope.clone(),
            )
        }));
        if !leader_election {
            controllers.await;
            break;
        }
        tokio::select! {
            _ = controllers => {
                elector.release().await;
                break;
            }
            lost = elector.hold() => {
                // Another replica may already be acting: every reconcile of this
                // term is dropped here, at its next await, as a killed process's
                // would be (each step is idempotent and recorded), and this
                // replica stands by again. It does not exit: a pod that
                // restarts on every lost lease backs off for minutes, and under
                // load both replicas did (measured with 30 tenants starting).
                error!(error = %lost, "lost the leader lease; stopped reconciling, standing by");
                metrics.set_leader(false);
            }
        }
    }
    info!("stopped");
    Ok(())
}

/// The items of a comma-separated setting, trimmed, without empty ones (an
/// unset variable is one empty item).
fn list_items(items: &[String]) -> Vec<String> {
    items
        .iter()
        .map(|i| i.trim().to_string())
        .filter(|i| !i.is_empty())
        .collect()
}

/// Tenant passes in flight at once: each holds connections to a tenant API
/// and its etcd, so a fleet that all wakes at once (a restart, a shared
/// outage) queues instead of opening hundreds at a time.
const TENANT_RECONCILES: u16 = 8;
/// The same for backups, restores, schedules and join tokens.
const OTHER_RECONCILES: u16 = 4;

fn bounded(concurrency: u16) -> kube::runtime::controller::Config {
    kube::runtime::controller::Config::default().concurrency(concurrency)
}

/// A client of the management cluster that counts every request
/// (`kok_api_requests_total`): what a fleet, or one broken tenant, costs the
/// API server is measured, not guessed.
async fn counting_client(metrics: Arc<Metrics>) -> anyhow::Result<Client> {
    Ok(kube::client::ClientBuilder::try_from(
        kube::Config::infer()
            .await
            .context("connecting to the management cluster")?,
    )?
    .with_layer(&tower::util::MapRequestLayer::new(
        move |request: http::Request<kube::client::Body>| {
            metrics.api_request(request.method());
            request
        },
    ))
    .build())
}

/// What the backups directory is: an emptyDir, a node directory, or a claim
/// whose files this replica serves to restore Jobs.
async fn backups_directory(
    cli: &Cli,
    client: &Client,
    namespace: &str,
    shutdown_rx: &watch::Receiver<bool>,
) -> anyhow::Result<BackupsDirectory> {
    Ok(match (cli.backup_host_path.as_str(), cli.backup_claim.as_str()) {
        ("", "") => BackupsDirectory::Ephemeral,
        (dir, "") => BackupsDirectory::HostPath(dir.to_string()),
        ("", _claim) => {
            let key = Arc::new(
                signing_key(client, namespace, &cli.artifacts_key_secret)
                    .await
                    .context("the artifact signing key")?,
            );
            let listener = tokio::net::TcpListener::bind(cli.artifacts_addr)
                .await
                .with_context(|| format!("binding {}", cli.artifacts_addr))?;
            tokio::spawn(serve::serve(
                listener,
                serve::router(kok_templates::backup::BACKUPS_MOUNT.into(), key.clone()),
                shutdown(shutdown_rx.clone()),
            ));
            BackupsDirectory::Claim(ArtifactService {
                service: cli.artifacts_service.clone(),
                key,
            })
        }
        _ => anyhow::bail!(
            "KOK_BACKUP_HOST_PATH and KOK_BACKUP_CLAIM are both set: the backups directory is one or the other"
        ),
    })
}

/// Where this operator acts: every namespace (`[None]`), or those it watches.
async fn watch_scopes(
    client: &Client,
    watch_namespaces: &[String],
) -> anyhow::Result<Vec<Option<String>>> {
    let scopes: Vec<Option<String>> = match list_items(watch_namespaces) {
        watched if watched.is_empty() => vec![None],
        watched => watched.into_iter().map(Some).collect(),
    };
    // A watched namespace kok may not read (deleted, so its RoleBinding went
    // with it, or not made yet) is only warned about: its watches retry with
    // backoff, and every other namespace is served. Only no CRD, or no right
    // anywhere, stops the operator.
    let mut readable = 0;
    for scope in &scopes {
        let tenants: Api<Lenient<TenantCluster>> = scoped(client, scope.as_deref());
        let where_ = scope.as_deref().unwrap_or("any namespace");
        match tenants.list(&ListParams::default().limit(1)).await {
            Ok(_) => readable += 1,
            Err(kube::Error::Api(e)) if e.code == 403 && scope.is_some() => {
                warn!(namespace = where_, error = %e, "cannot read TenantClusters in a watched namespace (deleted, or not bound yet); its watches retry")
            }
            Err(e) => anyhow::bail!("cannot list TenantClusters in {where_} ({e}); is the CRD installed (kubectl apply -f crds/crds.yaml), and may kok read there?"),
        }
    }
    if readable == 0 {
        anyhow::bail!("kok may read TenantClusters in none of the namespaces it watches ({:?}); see the chart's watchNamespaces", scopes);
    }
    Ok(scopes)
}

/// `K` in one namespace, or in all when `scope` is `None`.
fn scoped<K>(client: &Client, scope: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match scope {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Every controller of this term for one namespace (or all), until
/// shutdown. Dropping the future stops them all (watches, queues and
/// in-flight reconciles).
async fn run_controllers(
    client: Client,
    ctx: Arc<Context>,
    shutdown_rx: watch::Receiver<bool>,
    scope: Option<String>,
) {
    let scope = scope.as_deref();
    let tenants: Api<Lenient<TenantCluster>> = scoped(&client, scope);
    // Only kok's own children are watched (and cached), not every Secret in the cluster.
    let children = watcher::Config::default().labels("app.kubernetes.io/managed-by=kok");
    let tenant_controller = Controller::new(tenants.clone(), watcher::Config::default())
        .with_config(bounded(TENANT_RECONCILES))
        .owns_stream(triggers::changed(
            scoped::<StatefulSet>(&client, scope),
            children.clone(),
        ))
        .owns_stream(triggers::changed(
            scoped::<Deployment>(&client, scope),
            children.clone(),
        ))
        .owns_stream(triggers::changed(
            scoped::<Service>(&client, scope),
            children.clone(),
        ))
        .owns_stream(triggers::changed(
            scoped::<Secret>(&client, scope),
            children,
        ))
        .graceful_shutdown_on(shutdown(shutdown_rx.clone()))
        .run(
            |o, c| lenient::reconcile(o, c, tenant::reconcile),
            |o, e, c| lenient::error_policy(o, e, c, tenant::error_policy),
            ctx.clone(),
        )
        .for_each(log_result);
    let backup_controller = Controller::new(
        scoped::<Lenient<EtcdBackup>>(&client, scope),
        watcher::Config::default(),
    )
    .with_config(bounded(OTHER_RECONCILES))
    .graceful_shutdown_on(shutdown(shutdown_rx.clone()))
    .run(
        |o, c| lenient::reconcile(o, c, backup::reconcile),
        |o, e, c| lenient::error_policy(o, e, c, backup::error_policy),
        ctx.clone(),
    )
    .for_each(log_result);
    // The schedule looks at a tenant again whenever one of its backups changes.
    let restore_controller = Controller::new(
        scoped::<Lenient<EtcdRestore>>(&client, scope),
        watcher::Config::default(),
    )
    .with_config(bounded(OTHER_RECONCILES))
    .owns(
        scoped::<Job>(&client, scope),
        watcher::Config::default().labels("kok.dev/component=etcd-restore"),
    )
    .graceful_shutdown_on(shutdown(shutdown_rx.clone()))
    .run(
        |o, c| lenient::reconcile(o, c, restore::reconcile),
        |o, e, c| lenient::error_policy(o, e, c, restore::error_policy),
        ctx.clone(),
    )
    .for_each(log_result);
    let schedule_controller = Controller::new(tenants, watcher::Config::default())
        .with_config(bounded(OTHER_RECONCILES))
        .watches(
            scoped::<Lenient<EtcdBackup>>(&client, scope),
            watcher::Config::default(),
            |b: Lenient<EtcdBackup>| {
                let ns = b.namespace()?;
                let tenant = &b.object.as_ref().ok()?.spec.tenant_cluster;
                Some(ObjectRef::<Lenient<TenantCluster>>::new(tenant).within(&ns))
            },
        )
        .graceful_shutdown_on(shutdown(shutdown_rx.clone()))
        .run(
            |o, c| lenient::reconcile(o, c, backup_schedule::reconcile),
            |o, e, c| lenient::error_policy(o, e, c, backup_schedule::error_policy),
            ctx.clone(),
        )
        .for_each(log_result);
    let join_controller = Controller::new(
        scoped::<Lenient<JoinToken>>(&client, scope),
        watcher::Config::default(),
    )
    .with_config(bounded(OTHER_RECONCILES))
    .graceful_shutdown_on(shutdown(shutdown_rx.clone()))
    .run(
        |o, c| lenient::reconcile(o, c, join::reconcile),
        |o, e, c| lenient::error_policy(o, e, c, join::error_policy),
        ctx,
    )
    .for_each(log_result);
    let controller = async {
        tokio::join!(
            join_controller,
            tenant_controller,
            backup_controller,
            schedule_controller,
            restore_controller
        );
    };

    controller.await;
}

async fn log_result<T, E: std::fmt::Display>(result: Result<T, E>) {
    if let Err(e) = result {
        warn!(error = %e, "controller event");
    }
}

async fn shutdown(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn init_tracing(format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = format == "json";
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
