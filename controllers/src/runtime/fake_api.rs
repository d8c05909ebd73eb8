//! A fake management API for reconcile-pass tests (the tier between unit
//! tests and e2e): every request a pass makes is answered by the test's
//! routing function and recorded, so a test asserts what the pass read and
//! what it wrote, and that it wrote nothing else.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response};
use http_body_util::BodyExt;
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use kube::Client;
use serde_json::{json, Value};

use crate::runtime::context::{BackupsDirectory, Context, Settings};
use crate::runtime::telemetry::Metrics;

/// One request as the fake API saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    /// The path without the query, e.g. `/apis/kok.dev/v1alpha1/namespaces/t/tenantclusters/a/status`.
    pub path: String,
    pub query: String,
    /// The body as JSON (`Null` when there is none).
    pub body: Value,
}

impl Seen {
    /// A read: GET, whatever it asks for.
    pub fn is_read(&self) -> bool {
        self.method == Method::GET
    }

    /// A read of a collection (`.../namespaces/NS/pods`, `.../nodes`), not of one object.
    pub fn is_list(&self) -> bool {
        let segments: Vec<&str> = self.path.trim_matches('/').split('/').collect();
        // /api/v1/... or /apis/GROUP/VERSION/...
        let rest = match segments.first() {
            Some(&"api") => segments.get(2..),
            _ => segments.get(3..),
        }
        .unwrap_or_default();
        self.is_read()
            && (rest.len() == 1 || (rest.len() == 3 && rest.first() == Some(&"namespaces")))
    }

    /// An Event kok published (events.k8s.io).
    pub fn is_event(&self) -> bool {
        self.method == Method::POST && self.path.contains("/events")
    }

    /// The TenantCluster status write.
    pub fn is_status_write(&self) -> bool {
        self.method == Method::PATCH && self.path.ends_with("/status")
    }
}

/// What the fake answers: an HTTP status and a JSON body.
pub type Answer = (u16, Value);

/// The requests seen so far, in order.
#[derive(Clone, Default)]
pub struct Requests(Arc<Mutex<Vec<Seen>>>);

impl Requests {
    pub fn all(&self) -> Vec<Seen> {
        self.0.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Every request that is neither a read, an Event nor a status write:
    /// what a pass that must touch nothing else must not have made.
    pub fn other_writes(&self) -> Vec<Seen> {
        self.all()
            .into_iter()
            .filter(|s| !s.is_read() && !s.is_event() && !s.is_status_write())
            .collect()
    }

    pub fn events(&self) -> Vec<Value> {
        self.all()
            .into_iter()
            .filter(Seen::is_event)
            .map(|s| s.body)
            .collect()
    }

    /// The status written last (`status` of the applied patch).
    pub fn last_status(&self) -> Option<Value> {
        self.all()
            .into_iter()
            .rev()
            .find(Seen::is_status_write)
            .map(|s| s.body["status"].clone())
    }
}

/// 404 in the API's own shape.
pub fn not_found(seen: &Seen) -> Answer {
    (
        404,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
               "reason": "NotFound", "code": 404, "message": format!("{} not found", seen.path)}),
    )
}

/// A write answered with what was sent: enough for kok, which reads back
/// only what it wrote.
pub fn echo(seen: &Seen) -> Answer {
    (200, seen.body.clone())
}

/// A list of `items`, in the shape every list answer has.
pub fn list(items: Vec<Value>) -> Answer {
    (
        200,
        json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": items}),
    )
}

/// The default route: lists are empty, objects are not found, writes succeed.
pub fn empty_cluster(seen: &Seen) -> Answer {
    if seen.is_list() {
        list(Vec::new())
    } else if seen.is_read() {
        not_found(seen)
    } else {
        echo(seen)
    }
}

/// A client whose every request goes to `route`, and the record of them.
pub fn client(route: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> (Client, Requests) {
    let requests = Requests::default();
    let seen_by = requests.clone();
    let route = Arc::new(route);
    let service = tower::service_fn(move |req: Request<Body>| {
        let requests = seen_by.clone();
        let route = route.clone();
        async move {
            let (parts, body) = req.into_parts();
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let seen = Seen {
                method: parts.method,
                path: parts.uri.path().to_string(),
                query: parts.uri.query().unwrap_or_default().to_string(),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            };
            let (code, answer) = route(&seen);
            if let Ok(mut all) = requests.0.lock() {
                all.push(seen);
            }
            let response = Response::builder()
                .status(code)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&answer).unwrap_or_default()))
                .expect("a response from a status code and bytes");
            Ok::<_, Infallible>(response)
        }
    });
    (Client::new(service, "default"), requests)
}

/// An operator context on `client`, with the settings the e2e tests use.
pub fn context(client: Client) -> Arc<Context> {
    let reporter = Reporter {
        controller: "kok-operator".into(),
        instance: Some("test".into()),
    };
    Arc::new(Context::new(
        client.clone(),
        Recorder::new(client, reporter),
        Arc::new(Metrics::new()),
        BTreeMap::new(),
        "kok-system".into(),
        BTreeMap::new(),
        Settings {
            work_dir: std::env::temp_dir().join("kok-fake-api"),
            operator_image: None,
            backups: BackupsDirectory::HostPath("/var/lib/kok/backups".into()),
            operator_node: None,
            allow_http_s3: true,
            private_s3: Default::default(),
            image_repositories: Vec::new(),
            argocd: Default::default(),
        },
    ))
}

/// Where a tenant's children go, as a pass works it out from the tenant.
pub fn placement(tc: &kok_crds::TenantCluster) -> kok_templates::controlplane::Placement {
    use kube::{Resource, ResourceExt};
    kok_templates::controlplane::Placement {
        names: kok_templates::names::tenant_names(tc),
        namespace: tc.namespace().unwrap_or_default(),
        owner: tc
            .controller_owner_ref(&())
            .expect("a test tenant has a name and a uid"),
    }
}
