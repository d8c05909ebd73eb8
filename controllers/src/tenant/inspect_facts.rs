//! What inspection keeps of each object it reads from a tenant: one pure
//! function per kind, from the decoded object to the fact
//! `kok_templates::inspection` decides on.

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ServiceReference, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    Endpoints, Node, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Service,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kok_templates::inspection::{
    CertFact, ClaimFact, CrdFact, CsrFact, NodeFact, PodFact, ServiceFact, VolumeFact, WebhookFact,
};
use kube::ResourceExt;

/// A pod bound to a node: where it runs, and whether it is going.
pub(super) fn pod(p: Pod) -> Option<PodFact> {
    Some(PodFact {
        namespace: p.namespace().unwrap_or_default(),
        name: p.name_any(),
        deletion: p
            .metadata
            .deletion_timestamp
            .as_ref()
            .map(|t| t.0.as_second()),
        node_name: p.spec.and_then(|s| s.node_name),
    })
}

/// A Node's readiness (and since when), pressures, addresses and kubelet version.
pub(super) fn node(n: Node) -> Option<NodeFact> {
    let status = n.status.clone().unwrap_or_default();
    let conditions = status.conditions.unwrap_or_default();
    let ready = conditions.iter().find(|c| c.type_ == "Ready");
    Some(NodeFact {
        name: n.name_any(),
        internal_ips: status
            .addresses
            .into_iter()
            .flatten()
            .filter(|a| a.type_ == "InternalIP")
            .map(|a| a.address)
            .collect(),
        ready: ready.and_then(|c| match c.status.as_str() {
            "True" => Some(true),
            "False" => Some(false),
            _ => None,
        }),
        ready_since: ready
            .and_then(|c| c.last_transition_time.as_ref())
            .map(|t| t.0.as_second()),
        ready_reason: ready.and_then(|c| c.reason.clone()).unwrap_or_default(),
        pressures: conditions
            .iter()
            .filter(|c| c.type_.ends_with("Pressure") && c.status == "True")
            .map(|c| c.type_.clone())
            .collect(),
        kubelet_version: status
            .node_info
            .map(|i| i.kubelet_version)
            .unwrap_or_default(),
    })
}

/// A node's heartbeat Lease: its name and when it was last renewed.
pub(super) fn lease(l: Lease) -> Option<(String, i64)> {
    let renewed = l.spec?.renew_time?.0.as_second();
    Some((l.metadata.name?, renewed))
}

/// A certificate request: who asked, when, and whether it was decided.
pub(super) fn csr(c: CertificateSigningRequest) -> Option<CsrFact> {
    let decided = c
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| !cs.is_empty());
    Some(CsrFact {
        name: c.name_any(),
        created: c.metadata.creation_timestamp.as_ref()?.0.as_second(),
        pending: !decided,
        requestor: c.spec.username.clone().unwrap_or_default(),
    })
}

/// A PersistentVolume: its phase, claim and reclaim policy.
pub(super) fn volume(v: PersistentVolume) -> Option<VolumeFact> {
    let spec = v.spec.clone().unwrap_or_default();
    Some(VolumeFact {
        name: v.name_any(),
        phase: v.status.and_then(|s| s.phase).unwrap_or_default(),
        claim: spec.claim_ref.map(|c| {
            format!(
                "{}/{}",
                c.namespace.unwrap_or_default(),
                c.name.unwrap_or_default()
            )
        }),
        reclaim_policy: spec.persistent_volume_reclaim_policy,
    })
}

/// A PersistentVolumeClaim: its phase and volume.
pub(super) fn claim(c: PersistentVolumeClaim) -> Option<ClaimFact> {
    Some(ClaimFact {
        namespace: c.namespace().unwrap_or_default(),
        name: c.name_any(),
        phase: c.status.and_then(|s| s.phase).unwrap_or_default(),
        volume: c.spec.and_then(|s| s.volume_name),
    })
}

/// A Service: every address it answers on (cluster, external, load balancer) and its ports.
pub(super) fn service(s: Service) -> Option<ServiceFact> {
    let spec = s.spec.clone().unwrap_or_default();
    let mut ips: Vec<String> = spec
        .cluster_ips
        .clone()
        .unwrap_or_else(|| spec.cluster_ip.clone().into_iter().collect());
    ips.extend(spec.external_ips.clone().unwrap_or_default());
    ips.extend(
        s.status
            .and_then(|st| st.load_balancer)
            .and_then(|lb| lb.ingress)
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip),
    );
    ips.sort();
    ips.dedup();
    Some(ServiceFact {
        namespace: s.metadata.namespace.clone().unwrap_or_default(),
        name: s.metadata.name.clone().unwrap_or_default(),
        ips,
        ports: spec
            .ports
            .unwrap_or_default()
            .iter()
            .map(|p| format!("{}/{}", p.port, p.protocol.as_deref().unwrap_or("TCP")))
            .collect(),
    })
}

/// `namespace/name` of a Service with a ready endpoint (webhooks and conversions call them).
pub(super) fn ready_service(e: Endpoints) -> Option<String> {
    let ready = e
        .subsets
        .iter()
        .flatten()
        .any(|s| s.addresses.as_ref().is_some_and(|a| !a.is_empty()));
    ready.then(|| format!("{}/{}", e.namespace().unwrap_or_default(), e.name_any()))
}

/// A TLS Secret's certificate expiry (unparsable ones are not kept).
pub(super) fn tls_certificate(s: Secret) -> Option<CertFact> {
    let pem = s
        .data
        .as_ref()
        .and_then(|d| d.get("tls.crt"))
        .map(|b| String::from_utf8_lossy(&b.0).to_string())?;
    let not_after = kok_templates::pki::not_after(&pem).ok()?;
    Some(CertFact {
        object: format!(
            "Secret {}/{}",
            s.namespace().unwrap_or_default(),
            s.name_any()
        ),
        not_after: not_after.unix_timestamp(),
        renewed_by_kok: false,
    })
}

/// Whether the Service `namespace/name` has a ready endpoint; `None`: not known.
pub(super) type HasEndpoint<'a> = &'a dyn Fn(&str, &str) -> Option<bool>;

/// A CRD: its served and storage versions, what is stored, and its
/// conversion webhook's Service with whether it has an endpoint.
pub(super) fn crd(c: CustomResourceDefinition, has_endpoint: HasEndpoint) -> Option<CrdFact> {
    let conversion_service = c
        .spec
        .conversion
        .as_ref()
        .and_then(|conv| conv.webhook.as_ref())
        .and_then(|w| w.client_config.as_ref())
        .and_then(|cc| cc.service.as_ref())
        .and_then(|s| {
            Some((
                format!("{}/{}", s.namespace, s.name),
                has_endpoint(&s.namespace, &s.name)?,
            ))
        });
    Some(CrdFact {
        name: c.name_any(),
        served: c
            .spec
            .versions
            .iter()
            .filter(|v| v.served)
            .map(|v| v.name.clone())
            .collect(),
        storage: c
            .spec
            .versions
            .iter()
            .find(|v| v.storage)
            .map(|v| v.name.clone()),
        stored_versions: c.status.and_then(|s| s.stored_versions).unwrap_or_default(),
        conversion_service,
    })
}

/// Every webhook of a validating configuration.
pub(super) fn validating_webhooks(
    c: ValidatingWebhookConfiguration,
    has_endpoint: HasEndpoint,
) -> Vec<WebhookFact> {
    let configuration = format!("ValidatingWebhookConfiguration {}", c.name_any());
    let hooks = c.webhooks.unwrap_or_default().into_iter();
    hooks
        .map(|w| {
            webhook(
                &configuration,
                w.name,
                w.failure_policy,
                w.client_config.service,
                has_endpoint,
            )
        })
        .collect()
}

/// Every webhook of a mutating configuration (another type with the same fields).
pub(super) fn mutating_webhooks(
    c: MutatingWebhookConfiguration,
    has_endpoint: HasEndpoint,
) -> Vec<WebhookFact> {
    let configuration = format!("MutatingWebhookConfiguration {}", c.name_any());
    let hooks = c.webhooks.unwrap_or_default().into_iter();
    hooks
        .map(|w| {
            webhook(
                &configuration,
                w.name,
                w.failure_policy,
                w.client_config.service,
                has_endpoint,
            )
        })
        .collect()
}

/// One webhook of a validating or mutating configuration: whether it fails
/// closed, and its Service with whether it has an endpoint.
pub(super) fn webhook(
    configuration: &str,
    name: String,
    failure_policy: Option<String>,
    service: Option<ServiceReference>,
    has_endpoint: HasEndpoint,
) -> WebhookFact {
    WebhookFact {
        configuration: configuration.to_string(),
        webhook: name,
        fails_closed: failure_policy.as_deref() != Some("Ignore"),
        service: service.and_then(|s| {
            Some((
                format!("{}/{}", s.namespace, s.name),
                has_endpoint(&s.namespace, &s.name)?,
            ))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn from<K: serde::de::DeserializeOwned>(v: serde_json::Value) -> K {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_node_is_ready_only_on_true_and_keeps_only_pressures_that_hold() {
        let n: Node = from(json!({"metadata": {"name": "w1"}, "status": {
            "conditions": [
                {"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
                 "lastTransitionTime": "2026-12-04T10:00:00Z"},
                {"type": "MemoryPressure", "status": "True"},
                {"type": "DiskPressure", "status": "False"}],
            "addresses": [{"type": "InternalIP", "address": "10.0.0.5"},
                          {"type": "Hostname", "address": "w1"}],
            "nodeInfo": {"kubeletVersion": "v1.20.2", "machineID": "", "systemUUID": "",
                         "bootID": "", "kernelVersion": "", "osImage": "",
                         "containerRuntimeVersion": "", "kubeProxyVersion": "",
                         "operatingSystem": "linux", "architecture": "amd64"}}}));
        let f = node(n).unwrap();
        assert_eq!(f.ready, None, "Unknown is neither ready nor not ready");
        assert_eq!(f.ready_reason, "NodeStatusUnknown");
        assert!(f.ready_since.is_some());
        assert_eq!(f.pressures, vec!["MemoryPressure".to_string()]);
        assert_eq!(f.internal_ips, vec!["10.0.0.5".to_string()]);
        assert_eq!(f.kubelet_version, "v1.20.2");
    }

    #[test]
    fn a_service_answers_on_every_address_it_has_once() {
        let s: Service = from(json!({"metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.9", "clusterIPs": ["10.96.0.9"],
                     "externalIPs": ["192.0.2.7"], "ports": [{"port": 443}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.7"}, {"hostname": "lb"}]}}}));
        let f = service(s).unwrap();
        assert_eq!(
            f.ips,
            vec!["10.96.0.9".to_string(), "192.0.2.7".to_string()]
        );
        assert_eq!(f.ports, vec!["443/TCP".to_string()]);
    }

    #[test]
    fn an_unparsable_tls_secret_is_not_a_certificate_fact() {
        let s: Secret = from(json!({"metadata": {"name": "x", "namespace": "a"},
            "type": "kubernetes.io/tls", "data": {"tls.crt": "bm90IGEgY2VydA=="}}));
        assert!(tls_certificate(s).is_none());
        let none: Secret = from(json!({"metadata": {"name": "y", "namespace": "a"}}));
        assert!(tls_certificate(none).is_none());
    }

    #[test]
    fn a_webhook_fails_closed_unless_it_says_ignore_and_knows_its_endpoint() {
        let svc: ServiceReference = from(json!({"namespace": "sys", "name": "hook"}));
        let ready = |ns: &str, name: &str| Some(ns == "sys" && name == "hook");
        let f = webhook("V x", "w".into(), None, Some(svc.clone()), &ready);
        assert!(f.fails_closed, "the API's default is Fail");
        assert_eq!(f.service, Some(("sys/hook".to_string(), true)));
        let f = webhook(
            "V x",
            "w".into(),
            Some("Ignore".into()),
            Some(svc),
            &|_, _| None,
        );
        assert!(!f.fails_closed);
        assert_eq!(f.service, None, "endpoints not read: not known");
    }

    #[test]
    fn only_a_service_with_a_ready_address_counts_as_ready() {
        let ready: Endpoints = from(json!({"metadata": {"name": "hook", "namespace": "sys"},
            "subsets": [{"notReadyAddresses": [{"ip": "10.1.0.1"}]}, {"addresses": [{"ip": "10.1.0.2"}]}]}));
        assert_eq!(ready_service(ready).as_deref(), Some("sys/hook"));
        let not: Endpoints = from(json!({"metadata": {"name": "hook", "namespace": "sys"},
            "subsets": [{"notReadyAddresses": [{"ip": "10.1.0.1"}]}]}));
        assert_eq!(ready_service(not), None);
    }

    #[test]
    fn each_webhook_of_a_configuration_is_one_fact_named_by_it() {
        let c: ValidatingWebhookConfiguration = from(json!({
            "metadata": {"name": "policy"},
            "webhooks": [
                {"name": "a.example.com", "sideEffects": "None", "admissionReviewVersions": ["v1"],
                 "clientConfig": {"service": {"namespace": "sys", "name": "hook"}}},
                {"name": "b.example.com", "sideEffects": "None", "admissionReviewVersions": ["v1"],
                 "failurePolicy": "Ignore", "clientConfig": {"url": "https://example.com"}}]}));
        let facts = validating_webhooks(c, &|_, _| Some(false));
        assert_eq!(facts.len(), 2);
        assert_eq!(
            facts[0].configuration,
            "ValidatingWebhookConfiguration policy"
        );
        assert_eq!(facts[0].service, Some(("sys/hook".to_string(), false)));
        assert!(facts[0].fails_closed && !facts[1].fails_closed);
        assert_eq!(facts[1].service, None, "a URL webhook has no Service");
    }
}
