//! How tools reach a tenant: an advertised address in the kubeconfig and the
//! serving certificate, and the Argo CD cluster Secret kok keeps current.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kok_crds::TenantCluster;
use kok_e2e::{tenant, wait_for, with_namespace, Poll};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

const READY_TIMEOUT: Duration = Duration::from_secs(300);

fn data(s: &Secret, key: &str) -> String {
    String::from_utf8(s.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

#[tokio::test]
async fn argocd_gets_a_cluster_secret_that_follows_the_tenant() {
    with_namespace("access", |client, ns| async move {
        // Argo CD's namespace (Argo CD itself is not needed to check the Secret).
        let argocd = format!("{ns}-argocd");
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let n: Namespace = serde_json::from_value(json!({
            "metadata": {"name": argocd, "labels": {"kok.dev/e2e": "true"}}
        }))
        .unwrap();
        // Made already in namespaced mode, where the operator's Argo CD Role needs it.
        if let Err(e) = namespaces.create(&PostParams::default(), &n).await {
            assert!(
                matches!(&e, kube::Error::Api(s) if s.code == 409),
                "creating {argocd}: {e}"
            );
        }

        let mut tc = tenant::dev_tenant("acc", 1);
        tc.spec.access =
            serde_json::from_value(json!({"argocd": {"namespace": argocd, "project": "platform"}}))
                .unwrap();
        tenant::create(&client, &ns, &tc).await;
        let ready = tenant::wait_ready(&client, &ns, "acc", READY_TIMEOUT).await;
        let endpoint = ready.status.as_ref().unwrap().endpoint.clone().unwrap();

        let secrets: Api<Secret> = Api::namespaced(client.clone(), &argocd);
        // `kok-<namespace>.<tenant>`: injective, where `kok-<ns>-<name>` was not.
        let name = format!("kok-{ns}.acc");
        let s = wait_for(
            "the Argo CD cluster Secret",
            Duration::from_secs(60),
            || async {
                match secrets.get_opt(&name).await {
                    Ok(Some(s)) => Poll::Ready(s),
                    other => Poll::Pending(format!("{:?}", other.map(|o| o.is_some()))),
                }
            },
        )
        .await;
        assert_eq!(
            s.metadata.labels.as_ref().unwrap()["argocd.argoproj.io/secret-type"],
            "cluster"
        );
        assert_eq!(data(&s, "server"), endpoint);
        assert_eq!(data(&s, "project"), "platform");
        // The same client certificate as the admin kubeconfig.
        let kubeconfig = tenant::secret_text(&client, &ns, "acc-kubeconfig", "value").await;
        let config: serde_json::Value = serde_json::from_str(&data(&s, "config")).unwrap();
        let cert = config["tlsClientConfig"]["certData"].as_str().unwrap();
        assert!(kubeconfig.contains(cert), "the kubeconfig's certificate");

        // A renewed admin certificate reaches Argo CD: the stored one is made
        // unreadable, kok issues a new one (as it does 30 days before expiry)
        // and rewrites the cluster Secret with it.
        let old_cert = cert.to_string();
        let mgmt_secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        mgmt_secrets
            .patch(
                "acc-certs",
                &PatchParams::default(),
                &Patch::Merge(json!({"stringData": {"admin.crt": "not a certificate"}})),
            )
            .await
            .unwrap();
        let renewed = wait_for(
            "the Argo CD cluster Secret with the renewed certificate",
            Duration::from_secs(120),
            || async {
                let s = secrets.get(&name).await.unwrap();
                let config: serde_json::Value = serde_json::from_str(&data(&s, "config")).unwrap();
                let now = config["tlsClientConfig"]["certData"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                if !now.is_empty() && now != old_cert {
                    Poll::Ready(now)
                } else {
                    Poll::Pending("still the old certificate".into())
                }
            },
        )
        .await;
        let kubeconfig = tenant::secret_text(&client, &ns, "acc-kubeconfig", "value").await;
        assert!(
            kubeconfig.contains(&renewed),
            "the renewed certificate is the admin kubeconfig's too"
        );

        // A namespace the operator does not allow (hack/deploy-operator allows
        // `argocd` and `e2e-*-argocd`): refused, and the Secret written
        // before goes.
        let elsewhere = format!("{ns}-other");
        tenant::patch_spec(
            &client,
            &ns,
            "acc",
            json!({"access": {"argocd": {"namespace": elsewhere}}}),
        )
        .await;
        let why = argocd_refused(&client, &ns, "KOK_ARGOCD_NAMESPACES").await;
        assert!(why.contains(&elsewhere), "{why}");
        secret_gone(&secrets, &name, "the allowed Secret deleted").await;

        // Another cluster Secret there registers the same server: refused.
        let foreign: Secret = serde_json::from_value(json!({
            "metadata": {"name": "someone-else",
                         "labels": {"argocd.argoproj.io/secret-type": "cluster"}},
            "stringData": {"name": "someone-else", "server": endpoint, "config": "{}"}
        }))
        .unwrap();
        secrets
            .create(&PostParams::default(), &foreign)
            .await
            .unwrap();
        tenant::patch_spec(
            &client,
            &ns,
            "acc",
            json!({"access": {"argocd": {"namespace": argocd}}}),
        )
        .await;
        let why = argocd_refused(&client, &ns, "already registers the server").await;
        assert!(why.contains("someone-else"), "{why}");
        assert!(
            secrets.get_opt(&name).await.unwrap().is_none(),
            "nothing written beside it"
        );
        assert_eq!(
            data(&secrets.get("someone-else").await.unwrap(), "server"),
            endpoint,
            "the other Secret is left alone"
        );

        // Unset: the Secret goes.
        tenant::patch_spec(&client, &ns, "acc", json!({"access": {"argocd": null}})).await;
        secret_gone(&secrets, &name, "the Argo CD cluster Secret deleted").await;
        let _ = namespaces.delete(&argocd, &DeleteParams::default()).await;
    })
    .await;
}

/// Waits until Secret `name` is gone.
async fn secret_gone(secrets: &Api<Secret>, name: &str, what: &str) {
    wait_for(what, Duration::from_secs(60), || async {
        match secrets.get_opt(name).await {
            Ok(None) => Poll::Ready(()),
            other => Poll::Pending(format!("{:?}", other.map(|o| o.is_some()))),
        }
    })
    .await;
}

/// Waits for `ArgoCDRegistered` False with reason `ArgoCDRefused` and a
/// message containing `naming` (an earlier refusal may still be shown); the message.
async fn argocd_refused(client: &Client, ns: &str, naming: &str) -> String {
    let api: Api<TenantCluster> = Api::namespaced(client.clone(), ns);
    wait_for(
        "ArgoCDRegistered False (ArgoCDRefused)",
        Duration::from_secs(90),
        || async {
            let conditions = api
                .get("acc")
                .await
                .ok()
                .and_then(|t| t.status)
                .map(|s| s.conditions)
                .unwrap_or_default();
            match conditions.iter().find(|c| c.type_ == "ArgoCDRegistered") {
                Some(c)
                    if c.status == "False"
                        && c.reason == "ArgoCDRefused"
                        && c.message.contains(naming) =>
                {
                    Poll::Ready(c.message.clone())
                }
                other => Poll::Pending(format!("{other:?}")),
            }
        },
    )
    .await
}

#[tokio::test]
async fn an_advertised_address_is_the_kubeconfig_server_and_in_the_certificate() {
    with_namespace("advertised", |client, ns| async move {
        let mut tc = tenant::dev_tenant("adv", 1);
        tc.spec.control_plane.service =
            serde_json::from_value(json!({"advertisedAddress": "adv.tenants.example.test:443"}))
                .unwrap();
        tenant::create(&client, &ns, &tc).await;
        // Not Ready (nothing answers at that name here): wait for the kubeconfig.
        let api: Api<TenantCluster> = Api::namespaced(client.clone(), &ns);
        let endpoint = wait_for("status.endpoint", READY_TIMEOUT, || async {
            match api.get("adv").await.ok().and_then(|t| t.status?.endpoint) {
                Some(e) => Poll::Ready(e),
                None => Poll::Pending("none yet".into()),
            }
        })
        .await;
        assert_eq!(endpoint, "https://adv.tenants.example.test:443");
        let kubeconfig = tenant::secret_text(&client, &ns, "adv-kubeconfig", "value").await;
        assert!(
            kubeconfig.contains("server: \"https://adv.tenants.example.test:443\"")
                || kubeconfig.contains("server: https://adv.tenants.example.test:443"),
            "{kubeconfig}"
        );
        // The serving certificate names it.
        let cert = tenant::secret_text(&client, &ns, "adv-certs", "apiserver.crt").await;
        let out = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-ext", "subjectAltName"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(cert.as_bytes())?;
                c.wait_with_output()
            })
            .expect("openssl");
        let sans = String::from_utf8_lossy(&out.stdout);
        assert!(sans.contains("DNS:adv.tenants.example.test"), "{sans}");
    })
    .await;
}
