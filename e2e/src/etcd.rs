//! The tenant's etcd as kok's own client sees it: kok's operator client
//! certificate from the tenant's Secrets, a member reached at its Service.

use std::time::Duration;

use kube::Client;

use crate::{tenant, workloads};

/// A client of member `member` of TenantCluster `tc`, alone.
pub async fn member_client(
    client: &Client,
    ns: &str,
    tc: &str,
    member: i32,
) -> etcd_client::Client {
    let ca = tenant::secret_text(client, ns, &format!("{tc}-etcd-ca"), "tls.crt").await;
    let certs = format!("{tc}-certs");
    let cert = tenant::secret_text(client, ns, &certs, "etcd-operator-client.crt").await;
    let key = tenant::secret_text(client, ns, &certs, "etcd-operator-client.key").await;
    let name = format!("{tc}-etcd-{member}");
    let ip = workloads::cluster_ip(client, ns, &name).await;
    let tls = etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(ca))
        .identity(etcd_client::Identity::from_pem(cert, key))
        .domain_name(name.clone());
    let options = etcd_client::ConnectOptions::new()
        .with_tls(tls)
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(10));
    etcd_client::Client::connect([format!("https://{ip}:2379")], Some(options))
        .await
        .unwrap_or_else(|e| panic!("connecting to {name}: {e}"))
}

/// The membership as etcd reports it: (name, is a learner), by name.
pub async fn membership(client: &Client, ns: &str, tc: &str) -> Vec<(String, bool)> {
    let mut etcd = member_client(client, ns, tc, 0).await;
    let mut members: Vec<(String, bool)> = etcd
        .member_list()
        .await
        .expect("member list")
        .members()
        .iter()
        .map(|m| (m.name().to_string(), m.is_learner()))
        .collect();
    members.sort();
    members
}
