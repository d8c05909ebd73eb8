//! Worker nodes on the local cluster: a tenant asks kok for a join
//! credential, two lab nodes (`hack/tenant-node`: own network and mount
//! namespaces, containerd, kubelet v1.20.2) join with nothing but the
//! published `kubeadm join` command, their CSRs are approved without a
//! person, and pods run on them: logs, exec and port-forward through the
//! tenant apiserver, a ClusterIP Service across nodes (kube-proxy, which
//! kok runs), the tenant API from a pod with its service-account token.
//! Then the kubelet skew rule holds an upgrade, and a revoked or expired
//! token is refused.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::ConfigMap;
use kok_crds::{JoinToken, JoinTokenPhase, TenantCluster};
use kok_e2e::nodes::{join_node, kubeconfig_file, node_name, nodes_ready, request_join, LabNodes};
use kok_e2e::{tenant, wait_for, with_namespace, Poll};
use kube::api::{DeleteParams, ListParams};
use kube::Api;
use serde_json::json;

/// The node through an upgrade, a member replacement and a restore: in
/// this binary so its minutes overlap the tests above.
#[path = "nodes/lifecycle.rs"]
mod lifecycle;

const READY_TIMEOUT: Duration = Duration::from_secs(300);

/// A tenant whose kube-proxy leaves the conntrack table size alone: a lab
/// node is a network namespace, where the table size cannot be set.
fn node_tenant(name: &str) -> TenantCluster {
    let mut tc = tenant::dev_tenant(name, 1);
    tc.spec.addons.kube_proxy.conntrack_max_per_core = Some(0);
    tc
}

fn web_manifest(image: &str, toolbox: &str) -> String {
    // Two replicas on two nodes, each serving its own name on :8080.
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: default}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - topologyKey: kubernetes.io/hostname
            labelSelector: {{matchLabels: {{app: web}}}}
      containers:
      - name: web
        image: {image}
        imagePullPolicy: Never
        command: ["sh", "-c", "echo started on $(hostname); mkdir -p /www; hostname > /www/index.html; exec httpd -f -p 8080 -h /www"]
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: default}}
spec:
  containers:
  - name: client
    image: {toolbox}
    imagePullPolicy: Never
    command: ["sleep", "100000"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: default-view, namespace: default}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}}
subjects: [{{kind: ServiceAccount, name: default, namespace: default}}]
"#
    )
}

/// `GET /` on 127.0.0.1:port.
fn http_get(port: u16) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

#[tokio::test]
async fn nodes_join_with_the_published_command_and_run_pods() {
    with_namespace("nodes", |client, ns| async move {
        let name = "work";
        tenant::create(&client, &ns, &node_tenant(name)).await;
        tenant::wait_ready(&client, &ns, name, READY_TIMEOUT).await;
        let tenant_api = tenant::tenant_client(&client, &ns, name).await;
        let kubectl = kubeconfig_file(&client, &ns, name).await;

        // 1. A join credential, and two nodes joining with nothing else.
        let command = request_join(&client, &ns, "nodes", name, 3600).await;
        assert!(command.starts_with("kubeadm join "), "{command}");
        let names: Vec<String> = (1..=2).map(|i| node_name(&ns, i)).collect();
        let _cleanup = LabNodes(names.clone());
        for n in &names {
            let took = join_node(n, &command);
            println!(
                "node {n}: join command -> Ready in {:.1} s",
                took.as_secs_f64()
            );
        }
        nodes_ready(&tenant_api, &names, Duration::from_secs(60)).await;
        // Their client certificates were approved by the tenant, not a person.
        let csrs: Api<CertificateSigningRequest> = Api::all(tenant_api.clone());
        let approved = csrs
            .list(&ListParams::default())
            .await
            .expect("listing CSRs")
            .items
            .into_iter()
            .filter(|c| {
                c.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Approved"))
                    && c.status
                        .as_ref()
                        .and_then(|s| s.certificate.as_ref())
                        .is_some()
            })
            .count();
        assert!(
            approved >= 2,
            "{approved} approved and issued CSRs, want one per node"
        );

        // status.nodes on the TenantCluster.
        let tenants: Api<TenantCluster> = Api::namespaced(client.clone(), &ns);
        wait_for("status.nodes 2/2", Duration::from_secs(90), || async {
            let tc = tenants.get(name).await.unwrap();
            match tc.status.and_then(|s| s.nodes) {
                Some(n) if n.summary == "2/2" && n.kubelet_versions.get("v1.20.2") == Some(&2) => {
                    Poll::Ready(())
                }
                other => Poll::Pending(format!("{other:?}")),
            }
        })
        .await;

        // 2. Pods: two web replicas on two nodes, a client pod.
        let manifest = std::env::temp_dir().join(format!("{ns}-web.yaml"));
        std::fs::write(
            &manifest,
            web_manifest(
                &kok_e2e::image("busybox:1.35"),
                &kok_e2e::image("toolbox:1"),
            ),
        )
        .unwrap();
        kubectl.kubectl_ok(&["apply", "-f", manifest.to_str().unwrap()]);
        let _ = std::fs::remove_file(&manifest);
        let started = Instant::now();
        kubectl.kubectl_ok(&[
            "-n",
            "default",
            "wait",
            "--for=condition=Available",
            "deployment/web",
            "--timeout=120s",
        ]);
        kubectl.kubectl_ok(&[
            "-n",
            "default",
            "wait",
            "--for=condition=Ready",
            "pod/client",
            "--timeout=120s",
        ]);
        println!(
            "pods running {:.1} s after apply",
            started.elapsed().as_secs_f64()
        );
        let pods = kubectl.kubectl_ok(&[
            "-n",
            "default",
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName}{\"\\n\"}{end}",
        ]);
        let web: Vec<(String, String)> = pods
            .lines()
            .filter_map(|l| {
                l.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
            })
            .collect();
        assert_eq!(web.len(), 2, "{pods}");
        assert_ne!(web[0].1, web[1].1, "one replica per node: {pods}");

        // logs, exec, port-forward through the tenant apiserver.
        let logs = kubectl.kubectl_ok(&["-n", "default", "logs", &web[0].0]);
        assert!(logs.contains(&format!("started on {}", web[0].0)), "{logs}");
        let served = kubectl.kubectl_ok(&[
            "-n",
            "default",
            "exec",
            &web[1].0,
            "--",
            "cat",
            "/www/index.html",
        ]);
        assert_eq!(served.trim(), web[1].0);
        let mut pf = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(kubectl.path())
            .args([
                "-n",
                "default",
                "port-forward",
                &format!("pod/{}", web[0].0),
                ":8080",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl port-forward");
        let mut line = String::new();
        // Kept open until the GET is done: kubectl writes a line per
        // connection, and a closed pipe would end it.
        let mut pf_out = BufReader::new(pf.stdout.take().unwrap());
        pf_out.read_line(&mut line).expect("port-forward output");
        // "Forwarding from 127.0.0.1:PORT -> 8080"
        let port: u16 = line
            .split("127.0.0.1:")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no local port in {line:?}"));
        let body = http_get(port);
        let _ = pf.kill();
        let _ = pf.wait();
        drop(pf_out);
        let body = body.expect("GET through port-forward");
        assert!(body.contains(&web[0].0), "{body}");

        // A ClusterIP Service reaches both replicas from another pod.
        let ip = kubectl.kubectl_ok(&[
            "-n",
            "default",
            "get",
            "svc",
            "web",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ]);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..40 {
            // busybox's static wget crashes in glibc's NSS lookups; nc does not.
            let get = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} 80 | tail -n 1");
            let out = kubectl.kubectl(&["-n", "default", "exec", "client", "--", "sh", "-c", &get]);
            if out.status.success() {
                seen.insert(String::from_utf8_lossy(&out.stdout).trim().to_string());
            }
            if seen.len() == 2 {
                break;
            }
        }
        let want: std::collections::BTreeSet<String> = web.iter().map(|(p, _)| p.clone()).collect();
        assert_eq!(seen, want, "the Service at {ip} must reach both replicas");

        // The tenant API from a pod, through the `kubernetes` Service, with
        // the pod's service-account token.
        // kubectl in the pod uses the in-cluster configuration: the
        // `kubernetes` Service's address, the token and the CA it was given.
        let api_answer = kubectl.kubectl_ok(&[
            "-n", "default", "exec", "client", "--", "kubectl", "get", "pods", "-n", "default",
            "-o", "json",
        ]);
        assert!(
            api_answer.contains(&web[0].0) && api_answer.contains(&web[1].0),
            "{api_answer}"
        );

        // 5. The kubelet skew rule: v1.23 cannot serve v1.20 kubelets; the
        //    upgrade is held before anything moves, naming the nodes.
        tenant::patch_spec(&client, &ns, name, json!({"version": "v1.23.0"})).await;
        let held = tenant::wait_condition(
            &client,
            &ns,
            name,
            "Stalled",
            "True",
            Duration::from_secs(90),
        )
        .await;
        let stalled = tenant::condition(&held, "Stalled").unwrap();
        assert_eq!(stalled.reason, "PreflightFailed", "{stalled:?}");
        assert!(
            stalled.message.contains("kubelet version skew") && stalled.message.contains(&names[0]),
            "{}",
            stalled.message
        );
        let image = kubectl_management_image(&ns, name);
        assert!(
            image.ends_with(":v1.20.2"),
            "nothing rolled while held: {image}"
        );
        tenant::patch_spec(&client, &ns, name, json!({"version": "v1.20.2"})).await;
        tenant::wait_ready(&client, &ns, name, READY_TIMEOUT).await;

        // 3. A revoked token is refused, and its signature leaves cluster-info.
        let jts: Api<JoinToken> = Api::namespaced(client.clone(), &ns);
        let bootstrap = bootstrap_kubeconfig(&client, &ns, "nodes-join").await;
        assert!(
            token_works(&bootstrap),
            "the issued token must work before it is revoked"
        );
        let id = jts
            .get("nodes")
            .await
            .unwrap()
            .status
            .unwrap()
            .token_id
            .unwrap();
        jts.delete("nodes", &DeleteParams::default()).await.unwrap();
        wait_for("the JoinToken gone", Duration::from_secs(60), || async {
            match jts.get_opt("nodes").await {
                Ok(None) => Poll::Ready(()),
                other => Poll::Pending(format!("{:?}", other.map(|o| o.map(|j| j.status)))),
            }
        })
        .await;
        // The apiserver caches a successful token authentication for 10 s.
        let revoked = Instant::now();
        wait_for(
            "the revoked token refused",
            Duration::from_secs(30),
            || async {
                if token_works(&bootstrap) {
                    Poll::Pending("the tenant apiserver still accepts it".into())
                } else {
                    Poll::Ready(())
                }
            },
        )
        .await;
        println!(
            "revoked token refused {:.1} s after its JoinToken was gone",
            revoked.elapsed().as_secs_f64()
        );
        let info: Api<ConfigMap> = Api::namespaced(tenant_api.clone(), "kube-public");
        wait_for(
            "the token's signature gone from cluster-info",
            Duration::from_secs(60),
            || async {
                let cm = info.get("cluster-info").await.unwrap();
                let keys: Vec<String> = cm.data.unwrap_or_default().into_keys().collect();
                if keys.iter().any(|k| k == &format!("jws-kubeconfig-{id}")) {
                    Poll::Pending(format!("{keys:?}"))
                } else {
                    Poll::Ready(())
                }
            },
        )
        .await;

        // An expired token: refused as well.
        request_join(&client, &ns, "brief", name, 10).await;
        let brief = bootstrap_kubeconfig(&client, &ns, "brief-join").await;
        wait_for(
            "JoinToken brief Expired",
            Duration::from_secs(60),
            || async {
                match jts.get("brief").await.unwrap().status.and_then(|s| s.phase) {
                    Some(JoinTokenPhase::Expired) => Poll::Ready(()),
                    p => Poll::Pending(format!("{p:?}")),
                }
            },
        )
        .await;
        assert!(!token_works(&brief), "an expired token must be refused");
        let _ = std::fs::remove_file(&bootstrap);
        let _ = std::fs::remove_file(&brief);

        // The tenant side is kok's: a deleted object is put back.
        let deleted = Instant::now();
        info.delete("cluster-info", &DeleteParams::default())
            .await
            .unwrap();
        wait_for(
            "cluster-info put back",
            Duration::from_secs(150),
            || async {
                match info.get_opt("cluster-info").await {
                    Ok(Some(_)) => Poll::Ready(()),
                    other => Poll::Pending(format!("{other:?}")),
                }
            },
        )
        .await;
        println!(
            "a deleted cluster-info was back after {:.0} s",
            deleted.elapsed().as_secs_f64()
        );

        // CoreDNS, opt-in: applied at the tenant's DNS address (no CoreDNS
        // image exists on this machine, so its pods are not expected to run).
        tenant::patch_spec(
            &client,
            &ns,
            name,
            json!({"addons": {"coreDNS": {"enabled": true}}}),
        )
        .await;
        let services: Api<k8s_openapi::api::core::v1::Service> =
            Api::namespaced(tenant_api.clone(), "kube-system");
        let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
            Api::namespaced(tenant_api.clone(), "kube-system");
        wait_for(
            "CoreDNS applied in the tenant",
            Duration::from_secs(120),
            || async {
                let svc = services.get_opt("kube-dns").await.ok().flatten();
                let dep = deployments.get_opt("coredns").await.ok().flatten();
                match (svc.and_then(|s| s.spec?.cluster_ip), dep) {
                    (Some(ip), Some(_)) if ip == "10.96.0.10" => Poll::Ready(()),
                    (ip, dep) => Poll::Pending(format!(
                        "kube-dns at {ip:?}, coredns Deployment {}",
                        dep.is_some()
                    )),
                }
            },
        )
        .await;
    })
    .await;
}

/// The image of the tenant's apiserver Deployment in the management cluster.
fn kubectl_management_image(ns: &str, name: &str) -> String {
    let out = Command::new("kubectl")
        .args([
            "-n",
            ns,
            "get",
            "deployment",
            &format!("{name}-apiserver"),
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ])
        .output()
        .expect("kubectl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn bootstrap_kubeconfig(client: &kube::Client, ns: &str, secret: &str) -> std::path::PathBuf {
    let text = tenant::secret_text(client, ns, secret, "bootstrap-kubeconfig").await;
    let path = std::env::temp_dir().join(format!("kok-e2e-{ns}-{secret}.kubeconfig"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Whether the tenant apiserver accepts the bootstrap token (discovery is
/// open to any authenticated user, so only authentication decides).
fn token_works(kubeconfig: &std::path::Path) -> bool {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["get", "--raw", "/api"])
        .output()
        .expect("kubectl");
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        assert!(
            err.contains("Unauthorized") || err.contains("401"),
            "refused for another reason: {err}"
        );
    }
    out.status.success()
}

/// Node faults planted in a tenant, each found by inspection: a node whose
/// kubelet is gone (NotReady, its Lease not renewed, a pod stuck
/// terminating on it, force-deleted by the Repair policy), a Node object
/// under pressure with a kubelet too old for the control plane, and a CSR
/// nobody approves.
#[tokio::test]
async fn node_faults_are_found_by_inspection() {
    with_namespace("nodefaults", |client, ns| async move {
        let name = "faults";
        let mut tc = node_tenant(name);
        tc.spec.healing.csr_pending_seconds = Some(5);
        tc.spec
            .healing
            .checks
            .insert("PodStuckTerminating".into(), kok_crds::CheckPolicy::Repair);
        tenant::create(&client, &ns, &tc).await;
        tenant::wait_ready(&client, &ns, name, READY_TIMEOUT).await;
        let tenant_api = tenant::tenant_client(&client, &ns, name).await;
        let kubectl = kubeconfig_file(&client, &ns, name).await;
        let command = request_join(&client, &ns, "faults", name, 3600).await;
        let node = node_name(&ns, 1);
        let _cleanup = LabNodes(vec![node.clone()]);
        join_node(&node, &command);
        nodes_ready(&tenant_api, std::slice::from_ref(&node), Duration::from_secs(60)).await;
        kubectl.kubectl_ok(&[
            "-n", "default", "run", "victim", "--image", &kok_e2e::image("busybox:1.35"),
            "--image-pull-policy=Never", "--restart=Never", "--command", "--", "sleep", "100000",
        ]);
        kubectl.kubectl_ok(&["-n", "default", "wait", "--for=condition=Ready", "pod/victim", "--timeout=120s"]);

        // The kubelet goes away with its node; the Node object stays.
        let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../hack/tenant-node"))
            .args(["remove", &node])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        kubectl.kubectl_ok(&["-n", "default", "delete", "pod", "victim", "--grace-period=1", "--wait=false"]);

        // A Node with no kubelet behind it: under pressure, kubelet v1.17.
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(tenant_api.clone());
        let fake: k8s_openapi::api::core::v1::Node =
            serde_json::from_value(json!({"metadata": {"name": "old-kubelet"}})).unwrap();
        nodes.create(&Default::default(), &fake).await.expect("creating a Node");
        // Planted again before each inspection with a fresh heartbeat: the
        // node lifecycle controller turns a condition no kubelet renews into
        // Unknown after 40 s.
        let plant = || async {
            let now = k8s_openapi::jiff::Timestamp::now().to_string();
            let status = json!({"status": {
                "nodeInfo": {"kubeletVersion": "v1.17.0", "machineID": "", "systemUUID": "", "bootID": "",
                    "kernelVersion": "", "osImage": "", "containerRuntimeVersion": "", "kubeProxyVersion": "v1.17.0",
                    "operatingSystem": "linux", "architecture": "amd64"},
                // A fresh Ready heartbeat too: the node lifecycle controller
                // times a node by its Ready condition, and without one it
                // turned every condition Unknown within 5 s of each planting
                // (an inspection under load missed the window 13 times).
                "conditions": [
                    {"type": "MemoryPressure", "status": "True", "reason": "Planted",
                     "message": "planted by the test", "lastHeartbeatTime": now, "lastTransitionTime": now},
                    {"type": "Ready", "status": "False", "reason": "Planted",
                     "message": "no kubelet behind this Node", "lastHeartbeatTime": now, "lastTransitionTime": now}],
            }});
            nodes
                .patch_status("old-kubelet", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&status))
                .await
                .expect("planting the Node's status");
        };
        plant().await;

        // A CSR no signer approves by itself.
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "planted");
        let pem = params.serialize_request(&key).unwrap().pem().unwrap();
        let csrs: Api<CertificateSigningRequest> = Api::all(tenant_api.clone());
        let csr: CertificateSigningRequest = serde_json::from_value(json!({
            "metadata": {"name": "planted"},
            "spec": {"request": k8s_openapi::ByteString(pem.into_bytes()),
                     "signerName": "kubernetes.io/kube-apiserver-client", "usages": ["client auth"]},
        }))
        .unwrap();
        csrs.create(&Default::default(), &csr).await.expect("creating a CSR");

        // Inspect until every planted fault is a finding.
        let node_object = format!("Node {node}");
        let wanted = [
            ("NodeNotReady", node_object.as_str()),
            ("NodeLeaseNotRenewed", node_object.as_str()),
            ("NodePressure", "Node old-kubelet"),
            ("KubeletVersionSkew", "Node old-kubelet"),
            ("CSRPending", "CertificateSigningRequest planted"),
        ];
        let started = Instant::now();
        let mut round = 0;
        loop {
            round += 1;
            plant().await;
            let s = tenant::inspect(&client, &ns, name, &format!("faults-{round}")).await;
            let missing: Vec<_> = wanted
                .iter()
                .filter(|(check, object)| !s.findings.iter().any(|f| f.check == *check && f.object == *object))
                .collect();
            let repaired = s.repairs.iter().any(|r| {
                r.check == "PodStuckTerminating" && r.object == "Pod default/victim" && r.outcome == "Succeeded"
            });
            if missing.is_empty() && repaired {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(240),
                "after {round} inspections: missing {missing:?}, stuck pod repaired: {repaired}; findings {:?}",
                s.findings.iter().map(|f| format!("{} {}", f.check, f.object)).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        println!("every planted node fault found {:.0} s after planting", started.elapsed().as_secs_f64());
        let gone = kubectl.kubectl(&["-n", "default", "get", "pod", "victim"]);
        assert!(!gone.status.success(), "the stuck pod was force-deleted");
    })
    .await;
}
