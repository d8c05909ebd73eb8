//! Renders a TenantCluster fixture into every child and checks what the
//! control plane depends on: names pinned without DNS, flags, images, probes,
//! owner references and the rolling hash.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int;
use kok_crds::{ServiceType, TenantCluster};
use kok_templates::controlplane::{self as cp, ConfigHashes, Placement, Resolved};
use kok_templates::names::{Names, CONFIG_HASH_ANNOTATION, TENANT_LABEL};
use kok_templates::security::{container_security_context, pod_security_context, RUN_AS};
use kok_templates::validate::{validate, ValidSpec};
use kube::Resource;

fn fixture(name: &str) -> TenantCluster {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_yaml::from_str(&std::fs::read_to_string(&path).expect("fixture exists"))
        .expect("fixture parses")
}

struct Rendered {
    tc: TenantCluster,
    valid: ValidSpec,
    p: Placement,
    r: Resolved,
}

fn render(tc: TenantCluster) -> Rendered {
    let valid = validate(&tc.spec, None, &Default::default()).expect("fixture is valid");
    let p = Placement {
        names: Names::new(&tc.metadata.name.clone().unwrap()),
        namespace: tc.metadata.namespace.clone().unwrap(),
        owner: tc.controller_owner_ref(&()).expect("fixture has a uid"),
    };
    let r = Resolved {
        etcd_member_ips: (0..kok_templates::names::MAX_ETCD_MEMBERS)
            .map(|i| format!("10.202.0.{}", 10 + i))
            .collect(),
        apiserver_ip: "10.202.0.50".into(),
        etcd_cluster_token: "token-1".into(),
        etcd_drained_member: None,
        hashes: ConfigHashes {
            etcd: "e1".into(),
            apiserver: "a1".into(),
            controller_manager: "c1".into(),
            scheduler: "s1".into(),
        },
    };
    Rendered { tc, valid, p, r }
}

fn args(spec: &PodSpec) -> Vec<String> {
    spec.containers[0].args.clone().unwrap_or_default()
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let prefix = format!("--{name}=");
    args.iter().find_map(|a| a.strip_prefix(&prefix))
}

fn aliases(spec: &PodSpec) -> HashMap<String, String> {
    spec.host_aliases
        .iter()
        .flatten()
        .flat_map(|a| {
            a.hostnames
                .iter()
                .flatten()
                .map(move |h| (h.clone(), a.ip.clone()))
        })
        .collect()
}

/// Every https://host:port the component dials must be pinned by a host alias:
/// the management cluster may have no DNS.
fn assert_hosts_pinned(urls: &str, spec: &PodSpec) {
    let pinned = aliases(spec);
    for url in urls.split(',') {
        let host = url
            .trim_start_matches("https://")
            .split(':')
            .next()
            .unwrap();
        assert!(
            pinned.contains_key(host),
            "{host} in {url} is not pinned by hostAliases: {pinned:?}"
        );
    }
}

#[test]
fn etcd_members_find_each_other_without_dns() {
    let x = render(fixture("three-members.yaml"));
    let sts = cp::etcd_statefulset(&x.p, &x.tc.spec, &x.valid, &x.r);
    let spec = sts.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
    let podspec = spec.template.spec.as_ref().unwrap();
    let a = args(podspec);
    // The membership is read from the bootstrap ConfigMap, not a flag.
    assert_eq!(flag(&a, "initial-cluster"), None);
    let bootstrap = cp::etcd_bootstrap_config(
        &x.p,
        cp::Bootstrap::Forming {
            members: x.valid.etcd_replicas,
        },
    );
    assert_eq!(
        bootstrap.data.unwrap()[cp::INITIAL_CLUSTER_KEY],
        "demo-etcd-0=https://demo-etcd-0:2380,demo-etcd-1=https://demo-etcd-1:2380,demo-etcd-2=https://demo-etcd-2:2380"
    );
    // Every name a member may ever have is pinned, so a member added by a
    // live scaling is reachable without rolling the others.
    let pinned = aliases(podspec);
    assert_eq!(pinned["demo-etcd-0"], "10.202.0.10");
    assert_eq!(pinned["demo-etcd-2"], "10.202.0.12");
    assert_eq!(pinned["demo-etcd-4"], "10.202.0.14");
    assert_eq!(flag(&a, "initial-cluster-token"), Some("token-1"));
    assert_eq!(flag(&a, "client-cert-auth"), Some("true"));
    assert_eq!(
        podspec.containers[0].image.as_deref(),
        Some("kok.local/etcd:3.4.23")
    );
    // Ephemeral storage: an emptyDir, no claim templates.
    assert!(spec.volume_claim_templates.is_none());
    assert!(podspec
        .volumes
        .iter()
        .flatten()
        .any(|v| v.name == "data" && v.empty_dir.is_some()));
}

#[test]
fn persistent_etcd_gets_claims_of_the_declared_size() {
    let mut tc = fixture("three-members.yaml");
    tc.spec.etcd.storage.ephemeral = false;
    tc.spec.etcd.storage.size = "5Gi".into();
    tc.spec.etcd.storage.storage_class_name = Some("fast".into());
    let x = render(tc);
    let sts = cp::etcd_statefulset(&x.p, &x.tc.spec, &x.valid, &x.r);
    let claims = sts.spec.unwrap().volume_claim_templates.unwrap();
    let claim = claims[0].spec.as_ref().unwrap();
    assert_eq!(claim.storage_class_name.as_deref(), Some("fast"));
    assert_eq!(
        claim.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0,
        "5Gi"
    );
}

#[test]
fn member_services_publish_not_ready_peers() {
    let x = render(fixture("three-members.yaml"));
    let svc = cp::etcd_member_service(&x.p, 1);
    let spec = svc.spec.unwrap();
    assert_eq!(svc.metadata.name.as_deref(), Some("demo-etcd-1"));
    assert_eq!(spec.publish_not_ready_addresses, Some(true));
    assert_eq!(
        spec.selector.unwrap()["statefulset.kubernetes.io/pod-name"],
        "demo-etcd-1"
    );
}

#[test]
fn apiserver_reaches_every_member_and_keeps_serving_while_rolling() {
    let x = render(fixture("three-members.yaml"));
    let d: Deployment = cp::apiserver_deployment(&x.p, &x.tc.spec, &x.valid, &x.r);
    let spec = d.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(2));
    let ru = spec
        .strategy
        .as_ref()
        .unwrap()
        .rolling_update
        .as_ref()
        .unwrap();
    assert_eq!(
        ru.max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(0))
    );
    let podspec = spec.template.spec.as_ref().unwrap();
    let a = args(podspec);
    let servers = flag(&a, "etcd-servers").unwrap();
    assert_eq!(servers.split(',').count(), 3);
    assert_hosts_pinned(servers, podspec);
    assert_eq!(flag(&a, "advertise-address"), Some("10.202.0.50"));
    assert_eq!(
        flag(&a, "insecure-port"),
        Some("0"),
        "v1.20 must turn the insecure port off"
    );
    assert_eq!(flag(&a, "v"), Some("2"), "extra args are passed");
    // A stopping apiserver keeps serving until its endpoint is gone, and the
    // pod is given the time for that and for requests in flight.
    assert_eq!(flag(&a, "shutdown-delay-duration"), Some("10s"));
    assert!(podspec.termination_grace_period_seconds.unwrap() > 10 + 60);
    assert_eq!(
        podspec.containers[0].image.as_deref(),
        Some("kok.local/kube-apiserver:v1.20.2")
    );
    let probe = podspec.containers[0]
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(
        (probe.path.as_deref(), probe.scheme.as_deref()),
        (Some("/readyz"), Some("HTTPS"))
    );
    // It mounts exactly the files its flags name.
    let projected: BTreeSet<String> = podspec.volumes.as_ref().unwrap()[0]
        .projected
        .as_ref()
        .unwrap()
        .sources
        .iter()
        .flatten()
        .flat_map(|s| {
            s.secret
                .as_ref()
                .unwrap()
                .items
                .iter()
                .flatten()
                .map(|i| format!("/etc/kubernetes/pki/{}", i.path))
        })
        .collect();
    for f in [
        "etcd-cafile",
        "etcd-certfile",
        "etcd-keyfile",
        "tls-cert-file",
        "tls-private-key-file",
        "client-ca-file",
        "service-account-key-file",
        "service-account-signing-key-file",
        "proxy-client-cert-file",
        "requestheader-client-ca-file",
    ] {
        let path = flag(&a, f).unwrap();
        assert!(
            projected.contains(path),
            "--{f}={path} is not mounted: {projected:?}"
        );
    }
}

#[test]
fn controller_manager_and_scheduler_reach_the_apiserver_by_a_pinned_name() {
    let x = render(fixture("three-members.yaml"));
    for d in [
        cp::controller_manager_deployment(&x.p, &x.tc.spec, &x.valid, &x.r),
        cp::scheduler_deployment(&x.p, &x.tc.spec, &x.valid, &x.r),
    ] {
        let podspec = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        assert_eq!(aliases(podspec)["demo-apiserver"], "10.202.0.50");
        assert_eq!(
            flag(&args(podspec), "kubeconfig"),
            Some("/etc/kubernetes/kubeconfig/value")
        );
        assert!(podspec.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.mount_path == "/etc/kubernetes/kubeconfig"));
    }
}

#[test]
fn children_are_owned_and_labelled() {
    let x = render(fixture("three-members.yaml"));
    let metas = [
        cp::etcd_statefulset(&x.p, &x.tc.spec, &x.valid, &x.r).metadata,
        cp::apiserver_deployment(&x.p, &x.tc.spec, &x.valid, &x.r).metadata,
        cp::apiserver_service(&x.p, ServiceType::ClusterIP).metadata,
        cp::etcd_network_policy(&x.p, Default::default(), "kok-system", Default::default())
            .metadata,
    ];
    for m in metas {
        let owner = &m.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.kind, "TenantCluster");
        assert_eq!(owner.controller, Some(true));
        assert_eq!(m.labels.as_ref().unwrap()[TENANT_LABEL], "demo");
        assert_eq!(m.namespace.as_deref(), Some("tenants"));
    }
}

#[test]
fn a_changed_config_hash_changes_the_pod_template() {
    let x = render(fixture("three-members.yaml"));
    let before = cp::apiserver_deployment(&x.p, &x.tc.spec, &x.valid, &x.r);
    let mut r2 = x.r.clone();
    r2.hashes.apiserver = "a2".into();
    let after = cp::apiserver_deployment(&x.p, &x.tc.spec, &x.valid, &r2);
    let ann = |d: &Deployment| {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()[CONFIG_HASH_ANNOTATION]
            .clone()
    };
    assert_eq!(ann(&before), "a1");
    assert_eq!(ann(&after), "a2");
}

#[test]
fn default_images_come_from_the_upstream_registry() {
    let mut tc = fixture("three-members.yaml");
    tc.spec.image_repository = None;
    tc.spec.etcd.version = None;
    tc.spec.version = "v1.31.4".into();
    let x = render(tc);
    assert_eq!(
        cp::etcd_image(&x.tc.spec, &x.valid),
        "registry.k8s.io/etcd:3.5.15-0"
    );
    let d = cp::scheduler_deployment(&x.p, &x.tc.spec, &x.valid, &x.r);
    let podspec = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(
        podspec.containers[0].image.as_deref(),
        Some("registry.k8s.io/kube-scheduler:v1.31.4")
    );
    assert_eq!(flag(&args(podspec), "port"), None, "v1.31 has no --port");
}

#[test]
fn etcd_network_policy_admits_only_the_tenant_and_the_operator() {
    let x = render(fixture("three-members.yaml"));
    let operator = BTreeMap::from([(
        "app.kubernetes.io/name".to_string(),
        "kok-operator".to_string(),
    )]);
    // A 1.20 namespace, as hack/deploy-operator labels it.
    let namespace_labels = BTreeMap::from([("kok.dev/operator".to_string(), "true".to_string())]);
    let np = cp::etcd_network_policy(
        &x.p,
        operator.clone(),
        "kok-system",
        namespace_labels.clone(),
    );
    let spec = np.spec.unwrap();
    assert_eq!(
        spec.pod_selector.unwrap().match_labels.unwrap()["kok.dev/component"],
        "etcd"
    );
    assert_eq!(spec.policy_types, Some(vec!["Ingress".to_string()]));
    let rules = spec.ingress.unwrap();
    assert_eq!(rules.len(), 2);
    // Metrics: the operator alone.
    let metrics: Vec<_> = rules[1]
        .ports
        .iter()
        .flatten()
        .map(|p| p.port.clone())
        .collect();
    assert_eq!(metrics, [Some(Int(2381))]);
    let metrics_from = rules[1].from.clone().unwrap();
    assert_eq!(metrics_from.len(), 1);
    assert_eq!(
        metrics_from[0],
        rules[0].from.clone().unwrap()[2],
        "the operator peer"
    );
    let ports: Vec<_> = rules[0]
        .ports
        .iter()
        .flatten()
        .map(|p| p.port.clone())
        .collect();
    assert_eq!(ports, [Some(Int(2379)), Some(Int(2380))]);
    let from = rules[0].from.clone().unwrap();
    assert_eq!(from.len(), 3, "{from:?}");
    // The tenant's own pods, in the tenant's namespace only (no namespace selector).
    for (peer, component) in from.iter().zip(["etcd", "kube-apiserver"]) {
        let pods = peer.pod_selector.as_ref().unwrap().match_labels.as_ref();
        assert_eq!(pods.unwrap()["kok.dev/component"], component);
        assert_eq!(pods.unwrap()[TENANT_LABEL], "demo");
        assert!(peer.namespace_selector.is_none(), "{peer:?}");
        assert!(peer.ip_block.is_none());
    }
    // The operator: its pod labels AND its namespace, in one peer.
    let op = &from[2];
    assert_eq!(
        op.pod_selector.as_ref().unwrap().match_labels.as_ref(),
        Some(&operator)
    );
    let ns = op.namespace_selector.as_ref().unwrap();
    assert_eq!(ns.match_labels.as_ref(), Some(&namespace_labels));
    assert!(ns.match_expressions.is_none());
}

#[test]
fn etcd_network_policy_never_admits_operator_labels_from_any_namespace() {
    let x = render(fixture("three-members.yaml"));
    let operator = BTreeMap::from([(
        "app.kubernetes.io/name".to_string(),
        "kok-operator".to_string(),
    )]);
    for (labels, want) in [
        // 1.20 without labels: by name, which admits no one rather than everyone.
        (
            BTreeMap::new(),
            ("kubernetes.io/metadata.name", "kok-system"),
        ),
        // 1.21+: the apiserver's name label is preferred to anything else.
        (
            BTreeMap::from([
                (
                    "kubernetes.io/metadata.name".to_string(),
                    "kok-system".to_string(),
                ),
                ("kok.dev/operator".to_string(), "true".to_string()),
            ]),
            ("kubernetes.io/metadata.name", "kok-system"),
        ),
    ] {
        let np = cp::etcd_network_policy(&x.p, operator.clone(), "kok-system", labels);
        let from = np.spec.unwrap().ingress.unwrap()[0].from.clone().unwrap();
        let selector = from[2].namespace_selector.clone().unwrap();
        assert_eq!(
            selector.match_labels,
            Some(BTreeMap::from([(want.0.to_string(), want.1.to_string())]))
        );
    }
}

/// What every pod of the control plane must run with: Pod Security "restricted".
fn assert_restricted(what: &str, spec: &PodSpec) {
    let pod = spec
        .security_context
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: no pod securityContext"));
    assert_eq!(pod, &pod_security_context(), "{what}");
    assert_eq!(pod.run_as_non_root, Some(true), "{what}");
    assert_eq!(pod.run_as_user, Some(RUN_AS), "{what}");
    assert_eq!(pod.run_as_group, Some(RUN_AS), "{what}");
    assert_eq!(pod.fs_group, Some(RUN_AS), "{what}");
    assert_eq!(RUN_AS, 65532);
    assert_eq!(
        pod.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
        Some("RuntimeDefault"),
        "{what}"
    );
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for c in containers {
        let sc = c
            .security_context
            .as_ref()
            .unwrap_or_else(|| panic!("{what}/{}: no securityContext", c.name));
        assert_eq!(sc, &container_security_context(), "{what}/{}", c.name);
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_ne!(sc.privileged, Some(true));
        assert_ne!(sc.run_as_user, Some(0));
        assert_eq!(
            sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
            Some(vec!["ALL".to_string()])
        );
        assert!(sc.capabilities.as_ref().unwrap().add.is_none());
    }
    // Mounted keys are readable by the group the pod runs as (they belong to root).
    for v in spec.volumes.iter().flatten() {
        let mode = v
            .projected
            .as_ref()
            .and_then(|p| p.default_mode)
            .or(v.secret.as_ref().and_then(|s| s.default_mode));
        if let Some(mode) = mode {
            assert_eq!(
                mode & 0o440,
                0o440,
                "{what}: volume {} mode {mode:o}",
                v.name
            );
            assert_eq!(
                mode & 0o007,
                0,
                "{what}: volume {} is world-readable",
                v.name
            );
        }
        assert!(v.host_path.is_none(), "{what}: hostPath volume {}", v.name);
    }
}

#[test]
fn every_control_plane_pod_runs_restricted() {
    for ephemeral in [true, false] {
        let mut tc = fixture("three-members.yaml");
        tc.spec.etcd.storage.ephemeral = ephemeral;
        let x = render(tc);
        let etcd = cp::etcd_statefulset(&x.p, &x.tc.spec, &x.valid, &x.r);
        assert_restricted(
            "etcd",
            etcd.spec.as_ref().unwrap().template.spec.as_ref().unwrap(),
        );
        for d in [
            cp::apiserver_deployment(&x.p, &x.tc.spec, &x.valid, &x.r),
            cp::controller_manager_deployment(&x.p, &x.tc.spec, &x.valid, &x.r),
            cp::scheduler_deployment(&x.p, &x.tc.spec, &x.valid, &x.r),
        ] {
            let name = d.metadata.name.clone().unwrap();
            assert_restricted(
                &name,
                d.spec.as_ref().unwrap().template.spec.as_ref().unwrap(),
            );
        }
    }
}

#[test]
fn etcd_writes_only_to_its_data_volume() {
    // With a read-only root filesystem, the data dir must be a volume.
    let x = render(fixture("three-members.yaml"));
    let sts = cp::etcd_statefulset(&x.p, &x.tc.spec, &x.valid, &x.r);
    let podspec = sts.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let data_dir = flag(&args(podspec), "data-dir").unwrap().to_string();
    let c = &podspec.containers[0];
    let writable: Vec<&str> = c
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| m.read_only != Some(true))
        .map(|m| m.mount_path.as_str())
        .collect();
    assert!(
        writable
            .iter()
            .any(|m| data_dir.starts_with(&format!("{m}/"))),
        "--data-dir={data_dir} is not under a writable mount: {writable:?}"
    );
}

#[test]
fn etcd_peers_are_authenticated_by_the_ca_not_by_their_pod_ip() {
    // Pod IPs are unknown when certificates are issued, so the SAN check on
    // peer client certificates is off, under the flag name of each etcd minor.
    for (tag, flag_name) in [
        ("3.4.23", "experimental-peer-skip-client-san-verification"),
        ("3.5.16-0", "experimental-peer-skip-client-san-verification"),
        ("3.6.4-0", "peer-skip-client-san-verification"),
    ] {
        let mut tc = fixture("three-members.yaml");
        tc.spec.etcd.version = Some(tag.into());
        let x = render(tc);
        let sts = cp::etcd_statefulset(&x.p, &x.tc.spec, &x.valid, &x.r);
        let a = args(sts.spec.as_ref().unwrap().template.spec.as_ref().unwrap());
        assert_eq!(flag(&a, flag_name), Some("true"), "etcd {tag}: {a:?}");
        assert_eq!(flag(&a, "peer-client-cert-auth"), Some("true"));
    }
}

#[test]
fn a_member_without_data_reads_how_to_start_from_a_config_map_not_a_flag() {
    let mut tc = fixture("three-members.yaml");
    tc.spec.etcd.quota_backend_bytes = Some(64 << 20);
    let x = render(tc);
    let sts = cp::etcd_statefulset(&x.p, &x.tc.spec, &x.valid, &x.r);
    let pod = sts.spec.unwrap().template.spec.unwrap();
    let a = args(&pod);
    // A flag would be in the template: switching it would roll every member.
    assert_eq!(flag(&a, "initial-cluster-state"), None);
    assert_eq!(flag(&a, "quota-backend-bytes"), Some("67108864"));
    let env = pod.containers[0].env.clone().unwrap();
    let state = env
        .iter()
        .find(|e| e.name == "ETCD_INITIAL_CLUSTER_STATE")
        .expect("the state comes from the environment");
    let key = state
        .value_from
        .as_ref()
        .unwrap()
        .config_map_key_ref
        .as_ref()
        .unwrap();
    let forming = cp::etcd_bootstrap_config(&x.p, cp::Bootstrap::Forming { members: 3 });
    assert_eq!(key.name, forming.metadata.name.clone().unwrap());
    assert_eq!(forming.data.as_ref().unwrap()[&key.key], "new");
    let re_adding = cp::etcd_bootstrap_config(&x.p, cp::Bootstrap::Joining { members: 3 });
    assert_eq!(re_adding.data.unwrap()[&key.key], "existing");
    // The membership comes from the same ConfigMap: a member joining a
    // scaling from 3 to 5 sees the 3 and itself, not all 5.
    let members = env
        .iter()
        .find(|e| e.name == "ETCD_INITIAL_CLUSTER")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.config_map_key_ref.as_ref())
        .expect("the membership comes from the ConfigMap");
    assert_eq!(members.name, key.name);
    let joining = cp::etcd_bootstrap_config(&x.p, cp::Bootstrap::Joining { members: 4 });
    let initial = joining.data.unwrap()[&members.key].clone();
    assert_eq!(initial.split(',').count(), 4, "{initial}");
    assert!(initial.ends_with("demo-etcd-3=https://demo-etcd-3:2380"));
    // Formed, nothing joining: no member is named, so one without data
    // exits instead of bootstrapping anything.
    let sealed = cp::etcd_bootstrap_config(&x.p, cp::Bootstrap::Sealed);
    let data = sealed.data.unwrap();
    assert_eq!(data[&key.key], "new");
    assert!(!data[&members.key].contains("demo-etcd-"), "{data:?}");
    assert_eq!(
        forming.metadata.owner_references.unwrap()[0].uid,
        x.p.owner.uid
    );
}
