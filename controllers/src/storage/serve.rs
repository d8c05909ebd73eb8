//! The operator's backups directory, and how restore Jobs reach it.
//!
//! A hostPath is mounted by the Job on the node that took the backup. A claim
//! (`KOK_BACKUP_CLAIM`) lives in the operator's namespace, and a pod mounts
//! only claims of its own namespace. So every replica serves
//! `GET /artifacts/<path>` from the claim on its own port, behind the
//! operator's artifact Service. A Job presents a token for its one artifact
//! (`kok_templates::artifact_access`). The signing key is a Secret in the
//! operator's namespace: made once by whichever replica starts first, then
//! read by every replica, so any of them can check a token.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::ByteString;
use kok_crds::Destination;
use kok_templates::artifact_access::{self, ARTIFACTS_PORT_NAME, ARTIFACTS_ROUTE};
use kok_templates::restore::BackupsAccess;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

use crate::runtime::context::{BackupsDirectory, Context};
use crate::runtime::error::{Error, Result};

/// The key's length: HMAC-SHA256's block size.
const KEY_BYTES: usize = 32;
const KEY_FIELD: &str = "key";

/// The signing key in Secret `name` of the operator's namespace, made if no
/// replica made it yet. Two replicas starting at once: one creation wins
/// (409 for the other), and both then use the key that was stored.
pub async fn signing_key(client: &Client, namespace: &str, name: &str) -> anyhow::Result<Vec<u8>> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for _ in 0..2 {
        if let Some(secret) = secrets.get_opt(name).await? {
            let key = secret
                .data
                .as_ref()
                .and_then(|d| d.get(KEY_FIELD))
                .map(|v| v.0.clone())
                .filter(|k| k.len() >= KEY_BYTES)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "Secret {namespace}/{name} has no {KEY_FIELD} of {KEY_BYTES} bytes or more; delete it to have a new one made"
                    )
                })?;
            return Ok(key);
        }
        let mut key = vec![0u8; KEY_BYTES];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
            .map_err(|_| anyhow::anyhow!("no randomness for the artifact signing key"))?;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                labels: Some(
                    [(
                        "app.kubernetes.io/name".to_string(),
                        "kok-operator".to_string(),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            data: Some([(KEY_FIELD.to_string(), ByteString(key))].into()),
            ..Default::default()
        };
        crate::runtime::api::existing_is_done(
            secrets.create(&PostParams::default(), &secret).await,
        )?;
    }
    anyhow::bail!("Secret {namespace}/{name} was made but cannot be read back")
}

#[derive(Clone)]
struct Served {
    root: Arc<PathBuf>,
    key: Arc<Vec<u8>>,
}

/// `GET /artifacts/<path>` from `root`, for bearers of a token for `<path>`.
pub fn router(root: PathBuf, key: Arc<Vec<u8>>) -> Router {
    Router::new()
        .route(&format!("{ARTIFACTS_ROUTE}/{{*path}}"), get(artifact))
        .with_state(Served {
            root: Arc::new(root),
            key,
        })
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn artifact(
    State(served): State<Served>,
    UrlPath(path): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let Some(path) = artifact_access::request_path(&path) else {
        return (
            StatusCode::BAD_REQUEST,
            "not a path under the backups directory\n",
        )
            .into_response();
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if let Err(e) = artifact_access::check(&served.key, path, token, now_unix()) {
        // Why, for the Job's log; nothing about the file.
        return (StatusCode::FORBIDDEN, format!("{e}\n")).into_response();
    }
    let file_path = served.root.join(path);
    // Only a file under the directory: a symlink on the volume (made there
    // by hand) leads nowhere else.
    let inside = match (
        tokio::fs::canonicalize(&file_path).await,
        tokio::fs::canonicalize(served.root.as_ref()).await,
    ) {
        (Ok(file), Ok(root)) => file.starts_with(root),
        _ => false,
    };
    if !inside {
        return (StatusCode::NOT_FOUND, "no such artifact\n").into_response();
    }
    let file = match tokio::fs::File::open(&file_path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return (StatusCode::NOT_FOUND, "no such artifact\n").into_response()
        }
        Err(e) => {
            tracing::warn!(file = %file_path.display(), error = %e, "cannot open an artifact");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot open the artifact\n",
            )
                .into_response();
        }
    };
    let len = match file.metadata().await {
        Ok(m) if m.is_file() => m.len(),
        _ => return (StatusCode::NOT_FOUND, "no such artifact\n").into_response(),
    };
    // Streamed in bounded memory, like every artifact read.
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        body,
    )
        .into_response()
}

/// Serves `router` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "the artifact server stopped");
    }
}

/// How a restore Job of `destination` reads `artifact_key`, a backup that
/// `backup_node` took. The inner `Err` is final (a destination that cannot
/// be served); an outer one may pass (the Service not there yet).
pub async fn backups_access<'a>(
    ctx: &'a Context,
    destination: &Destination,
    artifact_key: &str,
    backup_node: Option<&'a str>,
) -> Result<std::result::Result<BackupsAccess<'a>, String>> {
    let Some(fs) = &destination.filesystem else {
        return Ok(Ok(BackupsAccess::None));
    };
    Ok(Ok(match &ctx.backups {
        BackupsDirectory::Ephemeral => BackupsAccess::None,
        BackupsDirectory::HostPath(dir) => BackupsAccess::HostPath {
            dir: dir.as_str(),
            // The artifact is on the node that took the backup, which need not
            // be where the leader runs now (the chart runs 2 replicas).
            node: backup_node.or(ctx.operator_node.as_deref()),
        },
        BackupsDirectory::Claim(a) => {
            let origin = service_origin(ctx, &a.service).await?;
            let served = match artifact_access::served_artifact(&origin, &fs.path, artifact_key) {
                Ok(s) => s,
                Err(e) => return Ok(Err(format!("serving the artifact to restore Jobs: {e}"))),
            };
            let expires = now_unix() + artifact_access::TOKEN_LIFETIME.as_secs();
            BackupsAccess::Served {
                base_url: served.base_url,
                token: artifact_access::mint(&a.key, &served.path, expires),
            }
        }
    }))
}

/// `http://<cluster IP>:<port>` of the artifact Service: by address, since a
/// management cluster need not run DNS for pods.
async fn service_origin(ctx: &Context, name: &str) -> Result<String> {
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ctx.operator_namespace);
    let missing = |why: &str| {
        Error::ArtifactService(format!(
            "Service {}/{name} {why}: restore Jobs fetch artifacts of the backups claim through it",
            ctx.operator_namespace
        ))
    };
    let svc = services
        .get_opt(name)
        .await?
        .ok_or_else(|| missing("not found"))?;
    let spec = svc.spec.unwrap_or_default();
    let ip = spec
        .cluster_ip
        .filter(|ip| !ip.is_empty() && ip != "None")
        .ok_or_else(|| missing("has no cluster IP"))?;
    let port = spec
        .ports
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.name.as_deref() == Some(ARTIFACTS_PORT_NAME))
        .map(|p| p.port)
        .ok_or_else(|| missing(&format!("has no port named {ARTIFACTS_PORT_NAME}")))?;
    // An IPv6 address goes in brackets in a URL.
    Ok(match ip.contains(':') {
        true => format!("http://[{ip}]:{port}"),
        false => format!("http://{ip}:{port}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn served_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kok-serve-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("fs/team-a/demo")).unwrap();
        std::fs::create_dir_all(dir.join("fs/team-b/demo")).unwrap();
        std::fs::write(dir.join("fs/team-a/demo/b1.db"), b"team a's snapshot").unwrap();
        std::fs::write(dir.join("fs/team-b/demo/b1.db"), b"team b's snapshot").unwrap();
        dir
    }

    async fn get(dir: &std::path::Path, path: &str, token: Option<&str>) -> (StatusCode, Vec<u8>) {
        let mut request = Request::get(path);
        if let Some(t) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let response = router(dir.to_path_buf(), Arc::new(KEY.to_vec()))
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        (status, body)
    }

    #[tokio::test]
    async fn a_job_reads_its_own_artifact_and_nothing_else() {
        let dir = served_dir();
        let later = now_unix() + 600;
        let token = artifact_access::mint(KEY, "fs/team-a/demo/b1.db", later);
        let (status, body) = get(&dir, "/artifacts/fs/team-a/demo/b1.db", Some(&token)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, b"team a's snapshot");

        // The same token for another tenant's artifact, none, a stale one.
        let (status, body) = get(&dir, "/artifacts/fs/team-b/demo/b1.db", Some(&token)).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(!body.starts_with(b"team b"), "{body:?}");
        let (status, _) = get(&dir, "/artifacts/fs/team-a/demo/b1.db", None).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let stale = artifact_access::mint(KEY, "fs/team-a/demo/b1.db", now_unix() - 1);
        let (status, _) = get(&dir, "/artifacts/fs/team-a/demo/b1.db", Some(&stale)).await;
        assert_eq!(status, StatusCode::FORBIDDEN);

        // A path out of the directory is refused before any token is read.
        let (status, _) = get(
            &dir,
            "/artifacts/fs/team-a/../team-b/demo/b1.db",
            Some(&token),
        )
        .await;
        assert_ne!(status, StatusCode::OK);
        let (status, _) = get(&dir, "/artifacts/fs/team-a/demo", Some(&token)).await;
        assert_eq!(status, StatusCode::FORBIDDEN);

        // A symlink out of the directory serves nothing, with a token or not.
        let outside = dir.with_extension("outside");
        std::fs::write(&outside, b"not a backup").unwrap();
        let link = dir.join("fs/team-a/demo/link.db");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        let linked = artifact_access::mint(KEY, "fs/team-a/demo/link.db", later);
        let (status, _) = get(&dir, "/artifacts/fs/team-a/demo/link.db", Some(&linked)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let _ = std::fs::remove_file(&outside);

        // A token for a path that is not there: 404, not an error.
        let gone = artifact_access::mint(KEY, "fs/team-a/demo/b2.db", later);
        let (status, _) = get(&dir, "/artifacts/fs/team-a/demo/b2.db", Some(&gone)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
