//! `kubectl kok` against the local cluster: the plugin found on PATH by
//! kubectl, its kubeconfig usable, a backup and a restore through it
//! complete, an upgrade plan printed without changing anything.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kok_crds::TenantCluster;
use kok_e2e::volumes::{make_volumes, remove_volumes};
use kok_e2e::{tenant, with_namespace};
use kube::api::{ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::json;

const READY_TIMEOUT: Duration = Duration::from_secs(300);

/// The directory holding the `kubectl-kok` binary (`cargo build -p
/// kubectl-kok`; hack/test-all builds it before the e2e tests).
fn plugin_dir() -> PathBuf {
    let dir = std::env::var_os("KOK_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug"));
    assert!(
        dir.join("kubectl-kok").is_file(),
        "no kubectl-kok in {}: run `cargo build -p kubectl-kok` first",
        dir.display()
    );
    dir
}

/// Runs `kubectl kok ARGS` with the plugin on PATH; returns stdout, panics
/// with stderr on failure.
fn kubectl_kok(args: &[&str]) -> String {
    kubectl_kok_both(args).0
}

/// Like [`kubectl_kok`], with stderr (notes and progress) too.
fn kubectl_kok_both(args: &[&str]) -> (String, String) {
    let path = format!(
        "{}:{}",
        plugin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("kubectl")
        .arg("kok")
        .args(args)
        .env("PATH", path)
        .output()
        .expect("running kubectl");
    assert!(
        out.status.success(),
        "kubectl kok {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// A kubeconfig whose current context points nowhere and whose context
/// `e2e` is the local cluster's: only `--context e2e` works with it.
fn kubeconfig_with_context(dir: &std::path::Path) -> PathBuf {
    let source = std::env::var("KUBECONFIG").expect("KUBECONFIG (hack/local-cluster env)");
    let mut kc: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&source).expect("reading KUBECONFIG"))
            .expect("a kubeconfig");
    let current = kc["current-context"]
        .as_str()
        .expect("a current context")
        .to_string();
    let contexts = kc["contexts"].as_array_mut().expect("contexts");
    let mut e2e = contexts
        .iter()
        .find(|c| c["name"] == current.as_str())
        .expect("the current context")
        .clone();
    e2e["name"] = json!("e2e");
    contexts.push(e2e);
    kc["current-context"] = json!("nowhere");
    let path = dir.join("kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&kc).unwrap()).unwrap();
    path
}

#[tokio::test]
async fn kubectl_kok_prints_a_kubeconfig_backs_up_restores_and_plans() {
    with_namespace("plugin", |client, ns| async move {
        make_volumes(&client, &ns, 1).await;
        let mut tc = tenant::dev_tenant("pl", 1);
        tc.spec.etcd.storage =
            serde_json::from_value(json!({"size": "1Gi", "storageClassName": ns})).unwrap();
        tc.spec.backup = Some(
            serde_json::from_value(json!({
                "destination": {"filesystem": {"path": format!("/var/lib/kok/backups/e2e-{ns}")}}
            }))
            .unwrap(),
        );
        tenant::create(&client, &ns, &tc).await;
        tenant::wait_ready(&client, &ns, "pl", READY_TIMEOUT).await;

        // The kubeconfig it prints reaches the tenant.
        let kubeconfig = kubectl_kok(&["-n", &ns, "kubeconfig", "pl"]);
        let config = Config::from_custom_kubeconfig(
            Kubeconfig::from_yaml(&kubeconfig).expect("a kubeconfig"),
            &KubeConfigOptions::default(),
        )
        .await
        .unwrap();
        let t = Client::try_from(config).unwrap();
        let namespaces = Api::<Namespace>::all(t.clone())
            .list(&ListParams::default())
            .await
            .expect("the tenant API answers with the printed kubeconfig");
        assert!(namespaces
            .items
            .iter()
            .any(|n| n.metadata.name.as_deref() == Some("default")));

        let status = kubectl_kok(&["-n", &ns, "status", "pl"]);
        assert!(
            status.contains("Ready") && status.contains("v1.20.2"),
            "{status}"
        );

        // -o json|yaml print the object; --kubeconfig and --context pick the cluster.
        let json: TenantCluster =
            serde_json::from_str(&kubectl_kok(&["-n", &ns, "status", "pl", "-o", "json"]))
                .expect("-o json prints the TenantCluster");
        assert_eq!(json.metadata.name.as_deref(), Some("pl"));
        let yaml: TenantCluster =
            serde_yaml::from_str(&kubectl_kok(&["-n", &ns, "status", "pl", "-o", "yaml"]))
                .expect("-o yaml prints the TenantCluster");
        assert_eq!(yaml.spec.version, "v1.20.2");
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = kubeconfig_with_context(dir.path());
        let kc = kubeconfig.to_str().unwrap();
        let picked = kubectl_kok(&[
            "--kubeconfig",
            kc,
            "--context",
            "e2e",
            "-n",
            &ns,
            "status",
            "pl",
        ]);
        assert!(picked.contains("v1.20.2"), "{picked}");
        let nowhere = Command::new(plugin_dir().join("kubectl-kok"))
            .args(["--kubeconfig", kc, "-n", &ns, "status", "pl"])
            .output()
            .unwrap();
        assert!(
            !nowhere.status.success(),
            "the file's current context points nowhere"
        );

        // Completion as kubectl (1.26+) asks for it: `kubectl_complete-kok WORDS`.
        let complete = dir.path().join("kubectl_complete-kok");
        std::os::unix::fs::symlink(plugin_dir().join("kubectl-kok"), &complete).unwrap();
        let out = Command::new(&complete)
            .args(["-n", &ns, "status", "p"])
            .output()
            .unwrap();
        let offered = String::from_utf8(out.stdout).unwrap();
        assert_eq!(offered, "pl\n:4\n", "tenant names from the cluster");
        let out = Command::new(&complete).args(["ba"]).output().unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), "backup\n:4\n");

        // Backup, a later write, restore: the later write is gone.
        let cms: Api<ConfigMap> = Api::namespaced(t.clone(), "default");
        let cm = |name: &str| -> ConfigMap {
            serde_json::from_value(json!({"metadata": {"name": name}})).unwrap()
        };
        cms.create(&PostParams::default(), &cm("before"))
            .await
            .unwrap();
        let (backup, progress) =
            kubectl_kok_both(&["-n", &ns, "backup", "pl", "--backup-name", "pl-b1"]);
        assert!(backup.contains("pl-b1 succeeded"), "{backup}");
        // Progress on the wait: the phases it went through, on stderr.
        assert!(
            progress.contains("etcdbackup/pl-b1: Succeeded"),
            "{progress}"
        );
        cms.create(&PostParams::default(), &cm("after"))
            .await
            .unwrap();
        let restorer = kok_e2e::bench::leader_process(&client).await;
        let restore = kubectl_kok(&["-n", &ns, "restore", "pl", "--from", "pl-b1"]);
        assert!(restore.contains("completed"), "{restore}");
        tenant::wait_ready(&client, &ns, "pl", READY_TIMEOUT).await;
        let t = tenant::tenant_client(&client, &ns, "pl").await;
        let cms: Api<ConfigMap> = Api::namespaced(t, "default");
        assert!(cms.get_opt("before").await.unwrap().is_some());
        assert!(
            cms.get_opt("after").await.unwrap().is_none(),
            "restored to the backup"
        );

        // What alerting reads (issue 11), scraped from the leader's /metrics.
        // Another test may restart the operator at any time (the upgrade test
        // kills it): a new leader publishes the tenant's gauges once it has
        // reconciled it, so they are waited for.
        let tenant = format!("namespace=\"{ns}\",tenant=\"pl\"");
        let metrics = kok_e2e::wait_for(
            "the leader's gauges for the tenant",
            Duration::from_secs(120),
            || {
                let (client, tenant) = (client.clone(), tenant.clone());
                async move {
                    let metrics = kok_e2e::bench::leader_metrics(&client).await;
                    match kok_e2e::bench::sample(&metrics, "kok_last_backup_size_bytes", &tenant) {
                        Some(_) => kok_e2e::Poll::Ready(metrics),
                        None => kok_e2e::Poll::Pending(format!("no gauges for {tenant} yet")),
                    }
                }
            },
        )
        .await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let sample = |name: &str, labels: &str| {
            kok_e2e::bench::sample(&metrics, name, labels)
                .unwrap_or_else(|| panic!("{name}{{{labels}}} in:\n{metrics}"))
        };
        assert_eq!(sample("kok_tenant_ready", &tenant), 1.0);
        let expiry = sample("kok_certificate_expiry_timestamp_seconds", &tenant);
        assert!(
            expiry > now + 300.0 * 86400.0,
            "certificates valid about a year: {expiry}"
        );
        let backed_up = sample("kok_last_successful_backup_timestamp_seconds", &tenant);
        assert!(now - backed_up < 900.0, "the backup above: {backed_up}");
        assert!(sample("kok_last_backup_size_bytes", &tenant) > 0.0);
        // The restore counter lives in the process that ran the restore.
        if kok_e2e::bench::leader_process(&client).await == restorer {
            assert!(sample("kok_etcd_restores_total", "result=\"completed\"") >= 1.0);
        } else {
            eprintln!("the operator restarted or changed leader since the restore: its counter is not this process's");
        }
        assert_eq!(sample("kok_leader", ""), 1.0);

        // An upgrade plan, printed only.
        let plan = kubectl_kok(&["-n", &ns, "upgrade", "pl", "--to", "v1.22.3", "--dry-run"]);
        assert!(
            plan.contains("step 1: v1.21.") && plan.contains("step 2: v1.22.3"),
            "{plan}"
        );
        let spec = Api::<TenantCluster>::namespaced(client.clone(), &ns)
            .get("pl")
            .await
            .unwrap()
            .spec;
        assert_eq!(spec.version, "v1.20.2", "a dry run changes nothing");

        let completions = kubectl_kok(&["completions", "bash"]);
        assert!(completions.contains("kubectl-kok"), "bash completions");
        Api::<TenantCluster>::namespaced(client.clone(), &ns)
            .delete("pl", &Default::default())
            .await
            .unwrap();
        remove_volumes(&client, &ns, 1).await;
    })
    .await;
}
