//! Addons kok runs inside a tenant cluster for its worker nodes: kube-proxy
//! (a DaemonSet following the control plane's version) and, opt-in,
//! CoreDNS at the tenant's DNS address. Applied through the tenant API.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kok_crds::{AddonsSpec, TenantClusterSpec};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::controlplane::DEFAULT_IMAGE_REPOSITORY;
use crate::names::{MANAGED_BY, MANAGED_BY_LABEL};
use crate::nodes::{dns_address, NodeInputs, BOOTSTRAP_GROUP, KUBE_SYSTEM};
use crate::version::KubeVersion;

pub const KUBE_PROXY: &str = "kube-proxy";
pub const COREDNS: &str = "coredns";
/// The Service kubeadm names CoreDNS's, kept for tools that look it up.
pub const DNS_SERVICE: &str = "kube-dns";

/// Every object of the enabled addons, by kind.
#[derive(Debug, Clone, Default)]
pub struct Addons {
    pub service_accounts: Vec<ServiceAccount>,
    pub config_maps: Vec<ConfigMap>,
    pub cluster_roles: Vec<ClusterRole>,
    pub cluster_role_bindings: Vec<ClusterRoleBinding>,
    pub roles: Vec<Role>,
    pub role_bindings: Vec<RoleBinding>,
    pub daemon_sets: Vec<DaemonSet>,
    pub deployments: Vec<Deployment>,
    pub services: Vec<Service>,
}

fn typed<T: DeserializeOwned>(what: &str, v: Value) -> Result<T, String> {
    serde_json::from_value(v).map_err(|e| format!("{what}: {e}"))
}

fn labels(app: &str) -> Value {
    json!({ MANAGED_BY_LABEL: MANAGED_BY, "k8s-app": app })
}

fn metadata(name: &str, app: &str, namespaced: bool) -> Value {
    let mut m = json!({ "name": name, "labels": labels(app) });
    if namespaced {
        m["namespace"] = json!(KUBE_SYSTEM);
    }
    m
}

/// `<repo>/<name>:<tag>`, where `registry.k8s.io` keeps CoreDNS under
/// `coredns/coredns` (as kubeadm pulls it) and a mirror under `coredns`.
fn addon_image(repo: &str, name: &str, tag: &str) -> String {
    if name == COREDNS && repo == DEFAULT_IMAGE_REPOSITORY {
        format!("{repo}/coredns/coredns:{tag}")
    } else {
        format!("{repo}/{name}:{tag}")
    }
}

/// The CoreDNS release kubeadm installs with each Kubernetes minor.
pub fn coredns_tag(v: KubeVersion) -> &'static str {
    match v.minor {
        0..=20 => "1.7.0",
        21 => "v1.8.0",
        22 => "v1.8.4",
        23 | 24 => "v1.8.6",
        25 | 26 => "v1.9.3",
        27 | 28 => "v1.10.1",
        29 | 30 => "v1.11.1",
        31 | 32 => "v1.11.3",
        33 => "v1.12.0",
        _ => "v1.12.1",
    }
}

/// The addons `spec.addons` enables, for the version the control plane runs.
pub fn addons(spec: &TenantClusterSpec, i: &NodeInputs) -> Result<Addons, String> {
    let mut out = Addons::default();
    let AddonsSpec {
        kube_proxy,
        core_dns,
    } = &spec.addons;
    if kube_proxy.enabled {
        add_kube_proxy(&mut out, i, kube_proxy.conntrack_max_per_core)?;
    }
    if core_dns.enabled {
        let image = core_dns
            .image
            .clone()
            .unwrap_or_else(|| addon_image(&i.image_repository, COREDNS, coredns_tag(i.version)));
        add_coredns(&mut out, i, &image)?;
    }
    Ok(out)
}

/// kube-proxy's configuration: iptables mode over the tenant's pod range;
/// its kubeconfig dials the endpoint nodes use (not the `kubernetes`
/// Service, which kube-proxy itself programs) with its service-account token.
pub fn kube_proxy_config(i: &NodeInputs, conntrack_max_per_core: Option<i32>) -> ConfigMap {
    let conntrack = conntrack_max_per_core
        .map(|n| format!("conntrack:\n  maxPerCore: {n}\n"))
        .unwrap_or_default();
    let config = format!(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
bindAddress: 0.0.0.0
clientConnection:
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
clusterCIDR: {pods}
mode: iptables
{conntrack}",
        pods = i.networking.pod_cidr
    );
    let kubeconfig = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: default
  cluster:
    certificate-authority: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt
    server: {endpoint}
contexts:
- name: default
  context:
    cluster: default
    namespace: default
    user: default
current-context: default
users:
- name: default
  user:
    tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token
",
        endpoint = i.endpoint
    );
    ConfigMap {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(KUBE_PROXY.into()),
            namespace: Some(KUBE_SYSTEM.into()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
                ("k8s-app".to_string(), KUBE_PROXY.to_string()),
            ])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([
            ("config.conf".to_string(), config),
            ("kubeconfig.conf".to_string(), kubeconfig),
        ])),
        ..Default::default()
    }
}

fn add_kube_proxy(out: &mut Addons, i: &NodeInputs, conntrack: Option<i32>) -> Result<(), String> {
    let image = addon_image(&i.image_repository, KUBE_PROXY, &i.version.to_string());
    out.service_accounts.push(typed(
        "kube-proxy ServiceAccount",
        json!({ "metadata": metadata(KUBE_PROXY, KUBE_PROXY, true) }),
    )?);
    out.cluster_role_bindings.push(typed(
        "kube-proxy ClusterRoleBinding",
        json!({
            "metadata": metadata("kubeadm:node-proxier", KUBE_PROXY, false),
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:node-proxier" },
            "subjects": [{ "kind": "ServiceAccount", "name": KUBE_PROXY, "namespace": KUBE_SYSTEM }],
        }),
    )?);
    // kubeadm join reads kube-proxy's configuration with the bootstrap token.
    out.roles.push(typed(
        "kube-proxy Role",
        json!({
            "metadata": metadata(KUBE_PROXY, KUBE_PROXY, true),
            "rules": [{ "apiGroups": [""], "resources": ["configmaps"], "resourceNames": [KUBE_PROXY], "verbs": ["get"] }],
        }),
    )?);
    out.role_bindings.push(typed(
        "kube-proxy RoleBinding",
        json!({
            "metadata": metadata(KUBE_PROXY, KUBE_PROXY, true),
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": KUBE_PROXY },
            "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": BOOTSTRAP_GROUP }],
        }),
    )?);
    out.config_maps.push(kube_proxy_config(i, conntrack));
    out.daemon_sets.push(typed(
        "kube-proxy DaemonSet",
        json!({
            "metadata": metadata(KUBE_PROXY, KUBE_PROXY, true),
            "spec": {
                "selector": { "matchLabels": { "k8s-app": KUBE_PROXY } },
                "updateStrategy": { "type": "RollingUpdate" },
                "template": {
                    "metadata": { "labels": labels(KUBE_PROXY) },
                    "spec": {
                        "serviceAccountName": KUBE_PROXY,
                        "hostNetwork": true,
                        "priorityClassName": "system-node-critical",
                        "nodeSelector": { "kubernetes.io/os": "linux" },
                        "tolerations": [{ "operator": "Exists" }],
                        "containers": [{
                            "name": KUBE_PROXY,
                            "image": image,
                            "imagePullPolicy": "IfNotPresent",
                            "command": [
                                "/usr/local/bin/kube-proxy",
                                "--config=/var/lib/kube-proxy/config.conf",
                                "--hostname-override=$(NODE_NAME)",
                            ],
                            "env": [{ "name": "NODE_NAME", "valueFrom": { "fieldRef": { "fieldPath": "spec.nodeName" } } }],
                            // It programs the node's iptables.
                            "securityContext": { "privileged": true },
                            "volumeMounts": [
                                { "name": "kube-proxy", "mountPath": "/var/lib/kube-proxy" },
                                { "name": "xtables-lock", "mountPath": "/run/xtables.lock" },
                                { "name": "lib-modules", "mountPath": "/lib/modules", "readOnly": true },
                            ],
                        }],
                        "volumes": [
                            { "name": "kube-proxy", "configMap": { "name": KUBE_PROXY } },
                            { "name": "xtables-lock", "hostPath": { "path": "/run/xtables.lock", "type": "FileOrCreate" } },
                            { "name": "lib-modules", "hostPath": { "path": "/lib/modules" } },
                        ],
                    },
                },
            },
        }),
    )?);
    Ok(())
}

fn add_coredns(out: &mut Addons, i: &NodeInputs, image: &str) -> Result<(), String> {
    let dns = dns_address(&i.networking.service_cidr)?;
    let domain = &i.networking.cluster_domain;
    out.service_accounts.push(typed(
        "CoreDNS ServiceAccount",
        json!({ "metadata": metadata(COREDNS, DNS_SERVICE, true) }),
    )?);
    out.cluster_roles.push(typed(
        "CoreDNS ClusterRole",
        json!({
            "metadata": metadata("system:coredns", DNS_SERVICE, false),
            "rules": [
                { "apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"], "verbs": ["list", "watch"] },
                { "apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"] },
            ],
        }),
    )?);
    out.cluster_role_bindings.push(typed(
        "CoreDNS ClusterRoleBinding",
        json!({
            "metadata": metadata("system:coredns", DNS_SERVICE, false),
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:coredns" },
            "subjects": [{ "kind": "ServiceAccount", "name": COREDNS, "namespace": KUBE_SYSTEM }],
        }),
    )?);
    let corefile = format!(
        ".:53 {{
    errors
    health {{
       lameduck 5s
    }}
    ready
    kubernetes {domain} in-addr.arpa ip6.arpa {{
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }}
    prometheus :9153
    forward . /etc/resolv.conf {{
       max_concurrent 1000
    }}
    cache 30
    loop
    reload
    loadbalance
}}
"
    );
    out.config_maps.push(typed(
        "CoreDNS ConfigMap",
        json!({ "metadata": metadata(COREDNS, DNS_SERVICE, true), "data": { "Corefile": corefile } }),
    )?);
    out.deployments.push(typed(
        "CoreDNS Deployment",
        json!({
            "metadata": metadata(COREDNS, DNS_SERVICE, true),
            "spec": {
                "replicas": 2,
                "selector": { "matchLabels": { "k8s-app": DNS_SERVICE } },
                "strategy": { "type": "RollingUpdate", "rollingUpdate": { "maxUnavailable": 1 } },
                "template": {
                    "metadata": { "labels": labels(DNS_SERVICE) },
                    "spec": {
                        "serviceAccountName": COREDNS,
                        "priorityClassName": "system-cluster-critical",
                        "nodeSelector": { "kubernetes.io/os": "linux" },
                        "tolerations": [
                            { "key": "CriticalAddonsOnly", "operator": "Exists" },
                            { "key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule" },
                        ],
                        "affinity": { "podAntiAffinity": { "preferredDuringSchedulingIgnoredDuringExecution": [{
                            "weight": 100,
                            "podAffinityTerm": {
                                "topologyKey": "kubernetes.io/hostname",
                                "labelSelector": { "matchLabels": { "k8s-app": DNS_SERVICE } },
                            },
                        }] } },
                        "containers": [{
                            "name": COREDNS,
                            "image": image,
                            "imagePullPolicy": "IfNotPresent",
                            "args": ["-conf", "/etc/coredns/Corefile"],
                            "resources": {
                                "requests": { "cpu": "100m", "memory": "70Mi" },
                                "limits": { "memory": "170Mi" },
                            },
                            "ports": [
                                { "name": "dns", "containerPort": 53, "protocol": "UDP" },
                                { "name": "dns-tcp", "containerPort": 53, "protocol": "TCP" },
                                { "name": "metrics", "containerPort": 9153, "protocol": "TCP" },
                            ],
                            "livenessProbe": {
                                "httpGet": { "path": "/health", "port": 8080 },
                                "initialDelaySeconds": 60, "timeoutSeconds": 5, "failureThreshold": 5,
                            },
                            "readinessProbe": { "httpGet": { "path": "/ready", "port": 8181 } },
                            "securityContext": {
                                "allowPrivilegeEscalation": false,
                                "readOnlyRootFilesystem": true,
                                "capabilities": { "add": ["NET_BIND_SERVICE"], "drop": ["ALL"] },
                            },
                            "volumeMounts": [{ "name": "config", "mountPath": "/etc/coredns", "readOnly": true }],
                        }],
                        "dnsPolicy": "Default",
                        "volumes": [{ "name": "config", "configMap": { "name": COREDNS } }],
                    },
                },
            },
        }),
    )?);
    out.services.push(typed(
        "CoreDNS Service",
        json!({
            "metadata": metadata(DNS_SERVICE, DNS_SERVICE, true),
            "spec": {
                "clusterIP": dns.to_string(),
                "selector": { "k8s-app": DNS_SERVICE },
                "ports": [
                    { "name": "dns", "port": 53, "protocol": "UDP" },
                    { "name": "dns-tcp", "port": 53, "protocol": "TCP" },
                    { "name": "metrics", "port": 9153, "protocol": "TCP" },
                ],
            },
        }),
    )?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kok_crds::TenantCluster;

    fn spec(yaml: &str) -> TenantClusterSpec {
        let tc: TenantCluster = serde_yaml::from_str(&format!(
            "apiVersion: kok.dev/v1alpha1\nkind: TenantCluster\nmetadata: {{name: t, namespace: n}}\nspec:\n  version: v1.20.2\n{yaml}"
        ))
        .expect("fixture");
        tc.spec
    }

    fn inputs(minor: u32, repo: &str) -> NodeInputs {
        NodeInputs {
            version: KubeVersion {
                major: 1,
                minor,
                patch: 2,
            },
            cluster_name: "t".into(),
            endpoint: "https://10.202.0.7:6443".into(),
            ca_pem: String::new(),
            networking: Default::default(),
            image_repository: repo.into(),
        }
    }

    #[test]
    fn kube_proxy_runs_by_default_at_the_control_plane_version() {
        let a = addons(&spec(""), &inputs(20, "kok.local")).unwrap();
        assert_eq!(a.daemon_sets.len(), 1);
        assert!(
            a.deployments.is_empty() && a.services.is_empty(),
            "CoreDNS is opt-in"
        );
        let ds = &a.daemon_sets[0];
        let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        assert_eq!(pod.host_network, Some(true));
        assert_eq!(
            pod.containers[0].image.as_deref(),
            Some("kok.local/kube-proxy:v1.20.2")
        );
        let later = addons(&spec(""), &inputs(21, "kok.local")).unwrap();
        let pod = later.daemon_sets[0]
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .clone()
            .unwrap();
        assert_eq!(
            pod.containers[0].image.as_deref(),
            Some("kok.local/kube-proxy:v1.21.2")
        );
        let cm = &a.config_maps[0].data.as_ref().unwrap();
        assert!(cm["config.conf"].contains("clusterCIDR: 10.244.0.0/16"));
        assert!(
            !cm["config.conf"].contains("conntrack"),
            "kube-proxy's default unless set"
        );
        assert!(cm["kubeconfig.conf"].contains("server: https://10.202.0.7:6443"));
    }

    #[test]
    fn kube_proxy_can_be_turned_off_and_conntrack_left_alone() {
        let off = spec("  addons:\n    kubeProxy:\n      enabled: false\n");
        assert!(addons(&off, &inputs(20, "kok.local"))
            .unwrap()
            .daemon_sets
            .is_empty());
        let zero = spec("  addons:\n    kubeProxy:\n      conntrackMaxPerCore: 0\n");
        let a = addons(&zero, &inputs(20, "kok.local")).unwrap();
        assert!(a.config_maps[0].data.as_ref().unwrap()["config.conf"].contains("maxPerCore: 0"));
    }

    #[test]
    fn coredns_serves_at_the_tenants_dns_address_when_enabled() {
        let on = spec("  networking:\n    serviceCIDR: 10.100.0.0/16\n  addons:\n    coreDNS:\n      enabled: true\n");
        let mut i = inputs(20, DEFAULT_IMAGE_REPOSITORY);
        i.networking = on.networking.clone();
        let a = addons(&on, &i).unwrap();
        let svc = a.services[0].spec.as_ref().unwrap();
        assert_eq!(svc.cluster_ip.as_deref(), Some("10.100.0.10"));
        let dep = a.deployments[0].spec.as_ref().unwrap();
        let c = &dep.template.spec.as_ref().unwrap().containers[0];
        assert_eq!(
            c.image.as_deref(),
            Some("registry.k8s.io/coredns/coredns:1.7.0")
        );
        let corefile = &a
            .config_maps
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(COREDNS))
            .unwrap()
            .data
            .as_ref()
            .unwrap()["Corefile"];
        assert!(
            corefile.contains("kubernetes cluster.local in-addr.arpa"),
            "{corefile}"
        );
        let mirror = addons(&on, &inputs(29, "kok.local")).unwrap();
        let c = &mirror.deployments[0]
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0];
        assert_eq!(c.image.as_deref(), Some("kok.local/coredns:v1.11.1"));
        for minor in 20..=34 {
            assert!(!coredns_tag(KubeVersion {
                major: 1,
                minor,
                patch: 0
            })
            .is_empty());
        }
    }
}
