//! Backup destinations behind one interface (object_store): a directory in the
//! operator's pod, or an S3-compatible bucket. Artifacts are written as
//! multipart uploads of fixed-size parts, so memory stays bounded at any size.
//! On a filesystem, artifacts are 0600 and their directories 0700: only the
//! operator's user (and restore Jobs, which run as the same user) reads them.

pub mod encryption;
mod guard;
mod open;
pub mod serve;

pub use self::open::{open_store, s3_credentials, Refusal};

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use kok_crds::{Destination, S3Destination};
use kok_templates::backup::PrivateEndpoints;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore, WriteMultipart};

use self::encryption::{ArtifactKey, Decryptor, EncryptionError, Encryptor};

/// Lowercase hex of a digest (sha256 sums and key ids in status).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Part size of multipart uploads (S3's minimum is 5 MiB).
pub const PART_SIZE: usize = 5 * 1024 * 1024;
/// Parts in flight at once: memory is bounded by PART_SIZE * (this + 1).
const PARTS_IN_FLIGHT: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    #[error("destination: {}", guard::response_summary(&.0.to_string()))]
    Store(#[from] object_store::Error),
    #[error("destination: {0}")]
    Config(String),
    #[error("{0}")]
    Encryption(#[from] EncryptionError),
}

/// S3 credentials, read from the Secret named in the destination.
#[derive(Clone)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

// Never print credentials, even in debug logs.
impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Mode of artifacts on a filesystem destination.
pub const ARTIFACT_MODE: u32 = 0o600;
/// Mode of the directories kok creates on a filesystem destination.
pub const DIR_MODE: u32 = 0o700;

#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    /// Set for a filesystem destination: where keys are on disk, for modes.
    local: Option<Arc<LocalFileSystem>>,
    /// Key prefix inside the store (S3 `prefix`), without slashes at the ends.
    prefix: String,
    /// `file:///dir` or `s3://bucket`, for locations shown in status.
    base_url: String,
    /// Set when `spec.backup.encryption` names a key: new artifacts are sealed.
    key: Option<Arc<ArtifactKey>>,
}

impl Store {
    /// `private`: the private S3 endpoints the operator allows
    /// (`KOK_S3_PRIVATE_ENDPOINTS`), checked again where a name resolves.
    pub fn open(
        destination: &Destination,
        credentials: Option<S3Credentials>,
        private: &PrivateEndpoints,
    ) -> Result<Self, DestinationError> {
        match (&destination.filesystem, &destination.s3) {
            (Some(fs), None) => Self::filesystem(&fs.path),
            (None, Some(s3)) => {
                let creds = credentials.ok_or_else(|| {
                    DestinationError::Config("S3 destination without credentials".into())
                })?;
                Self::s3(s3, creds, private)
            }
            _ => Err(DestinationError::Config(
                "set exactly one of filesystem and s3".into(),
            )),
        }
    }

    pub fn filesystem(dir: &str) -> Result<Self, DestinationError> {
        private_dir(std::path::Path::new(dir))
            .map_err(|e| DestinationError::Config(format!("creating {dir}: {e}")))?;
        let local = Arc::new(LocalFileSystem::new_with_prefix(dir)?);
        Ok(Self {
            inner: local.clone(),
            local: Some(local),
            prefix: String::new(),
            base_url: format!("file://{}", dir.trim_end_matches('/')),
            key: None,
        })
    }

    pub fn s3(
        s3: &S3Destination,
        creds: S3Credentials,
        private: &PrivateEndpoints,
    ) -> Result<Self, DestinationError> {
        let allow_http = s3
            .endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"));
        let mut builder = AmazonS3Builder::new()
            .with_http_connector(guard::GuardedConnector {
                allowed: Arc::new(private.clone()),
                allow_http,
            })
            .with_bucket_name(&s3.bucket)
            .with_region(&s3.region)
            .with_access_key_id(&creds.access_key_id)
            .with_secret_access_key(&creds.secret_access_key);
        if let Some(token) = &creds.session_token {
            builder = builder.with_token(token);
        }
        if let Some(endpoint) = &s3.endpoint {
            // S3-compatible servers: path-style addressing; plain http only if asked for.
            builder = builder
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false)
                .with_allow_http(allow_http);
        }
        Ok(Self {
            inner: Arc::new(builder.build()?),
            local: None,
            prefix: s3
                .prefix
                .clone()
                .unwrap_or_default()
                .trim_matches('/')
                .to_string(),
            base_url: format!("s3://{}", s3.bucket),
            key: None,
        })
    }

    /// An artifact directory the operator serves (`serve`), read by a
    /// restore Job with a token for one artifact. Read-only in practice: the
    /// operator serves GET only.
    pub fn served(base_url: &str, token: &str) -> Result<Self, DestinationError> {
        let store = object_store::http::HttpBuilder::new()
            .with_url(base_url)
            .with_client_options(ClientOptions::new().with_allow_http(true))
            .with_http_connector(guard::ServedConnector {
                token: token.to_string(),
            })
            .build()?;
        Ok(Self {
            inner: Arc::new(store),
            local: None,
            prefix: String::new(),
            base_url: base_url.trim_end_matches('/').to_string(),
            key: None,
        })
    }

    /// Seals new artifacts with `key` (and opens sealed ones with it).
    pub fn with_key(mut self, key: Option<Arc<ArtifactKey>>) -> Self {
        self.key = key;
        self
    }

    /// The id of the key new artifacts are sealed with, if any.
    pub fn key_id(&self) -> Option<String> {
        self.key.as_ref().map(|k| k.id().to_string())
    }

    fn path(&self, key: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(key)
        } else {
            Path::from(format!("{}/{key}", self.prefix))
        }
    }

    /// The artifact's file, when it can be restored where it lies: a
    /// filesystem destination and no key (a sealed artifact is opened into a
    /// copy first). Reading it in place saves writing the whole database once.
    pub fn plain_local_file(&self, key: &str) -> Option<std::path::PathBuf> {
        if self.key.is_some() {
            return None;
        }
        self.local
            .as_ref()?
            .path_to_filesystem(&self.path(key))
            .ok()
    }

    /// The location of `key` as shown to users (`file:///…`, `s3://bucket/…`).
    pub fn location(&self, key: &str) -> String {
        format!("{}/{}", self.base_url, self.path(key))
    }

    /// Starts writing `key`; nothing is visible under it until `finish`.
    pub async fn writer(&self, key: &str) -> Result<ArtifactWriter, DestinationError> {
        let path = self.path(key);
        // object_store creates its files with the process umask (usually
        // 0644): the directories are made 0700 first, so no other user can
        // open the file in the moment before `finish` makes it 0600.
        let file = match &self.local {
            Some(local) => {
                let file = local.path_to_filesystem(&path)?;
                if let Some(parent) = file.parent() {
                    private_dir(parent).map_err(|e| {
                        DestinationError::Config(format!("creating {}: {e}", parent.display()))
                    })?;
                }
                Some(file)
            }
            None => None,
        };
        let upload = self.inner.put_multipart(&path).await?;
        let seal = match &self.key {
            Some(k) => Some(Encryptor::new(k.clone())?),
            None => None,
        };
        Ok(ArtifactWriter {
            write: WriteMultipart::new_with_chunk_size(upload, PART_SIZE),
            file,
            seal,
        })
    }

    /// The artifact's content: a sealed artifact is opened on the way (in
    /// bounded memory), a plain one (older, or written without a key) is
    /// passed through; the recorded sha256 is checked by the caller either way.
    pub async fn read(
        &self,
        key: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, DestinationError>>, DestinationError> {
        let mut inner = self
            .inner
            .get(&self.path(key))
            .await?
            .into_stream()
            .map(|r| r.map_err(DestinationError::from))
            .boxed();
        let mut head = Vec::new();
        while head.len() < encryption::MAGIC.len() {
            match inner.next().await {
                Some(chunk) => head.extend_from_slice(&chunk?),
                None => break,
            }
        }
        let sealed = encryption::is_encrypted(&head);
        let whole = futures::stream::once(async move { Ok(Bytes::from(head)) }).chain(inner);
        if !sealed {
            return Ok(whole.boxed());
        }
        let key = self.key.clone().ok_or(EncryptionError::KeyMissing)?;
        Ok(open_stream(whole.boxed(), Decryptor::new(key)))
    }

    pub async fn size(&self, key: &str) -> Result<u64, DestinationError> {
        Ok(self.inner.head(&self.path(key)).await?.size)
    }

    /// Deletes `key`; a key that is already gone is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), DestinationError> {
        match self.inner.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn exists(&self, key: &str) -> Result<bool, DestinationError> {
        match self.inner.head(&self.path(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// A multipart upload in progress.
pub struct ArtifactWriter {
    write: WriteMultipart,
    /// On a filesystem destination, the artifact's path (made 0600 on finish).
    file: Option<PathBuf>,
    seal: Option<Encryptor>,
}

impl ArtifactWriter {
    /// Buffers `data`; waits while too many parts are in flight (backpressure
    /// instead of memory growth when the destination is slower than etcd).
    pub async fn write(&mut self, data: &[u8]) -> Result<(), DestinationError> {
        self.write.wait_for_capacity(PARTS_IN_FLIGHT).await?;
        match &mut self.seal {
            Some(seal) => self.write.write(&seal.push(data)?),
            None => self.write.write(data),
        }
        Ok(())
    }

    pub async fn finish(mut self) -> Result<(), DestinationError> {
        if let Some(seal) = self.seal.take() {
            self.write.write(&seal.finish()?);
        }
        self.write.finish().await?;
        if let Some(file) = self.file {
            let perms = std::fs::Permissions::from_mode(ARTIFACT_MODE);
            if let Err(e) = tokio::fs::set_permissions(&file, perms).await {
                // An artifact others might read is not left behind.
                let _ = tokio::fs::remove_file(&file).await;
                return Err(DestinationError::Config(format!(
                    "making {} private: {e}",
                    file.display()
                )));
            }
        }
        Ok(())
    }

    /// Drops the partial upload: nothing remains under the key.
    pub async fn abort(self) {
        let _ = self.write.abort().await;
    }
}

/// Decrypts `sealed` piece by piece; the last piece is checked for the
/// last-chunk flag, so a truncated artifact ends in an error, not short data.
fn open_stream(
    sealed: BoxStream<'static, Result<Bytes, DestinationError>>,
    decryptor: Decryptor,
) -> BoxStream<'static, Result<Bytes, DestinationError>> {
    futures::stream::unfold(
        (sealed, Some(decryptor)),
        |(mut sealed, decryptor)| async move {
            let mut d = decryptor?;
            loop {
                let step = match sealed.next().await {
                    Some(Ok(piece)) => match d.push(&piece) {
                        Ok(out) if out.is_empty() => continue,
                        Ok(out) => Ok(Bytes::from(out)),
                        Err(e) => Err(e.into()),
                    },
                    Some(Err(e)) => Err(e),
                    None => {
                        let last = d.finish().map(Bytes::from).map_err(Into::into);
                        return Some((last, (sealed, None)));
                    }
                };
                let next = step.is_ok().then_some(d);
                return Some((step, (sealed, next)));
            }
        },
    )
    .boxed()
}

/// Creates `dir` and its missing parents as 0700, and makes `dir` itself 0700
/// if it existed with a wider mode (directories of older kok versions). A
/// directory someone else owns keeps its mode (the artifacts are 0600 anyway).
fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode != DIR_MODE {
        if let Err(e) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE)) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot make the backup directory 0700");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_filesystem_artifacts_are_restored_in_place() {
        let dir = std::env::temp_dir().join(format!("kok-store-{}", std::process::id()));
        let store = Store::filesystem(dir.to_str().unwrap()).unwrap();
        let file = store.plain_local_file("ns/t/b1.db").unwrap();
        assert_eq!(file, dir.join("ns/t/b1.db"));
        // A key means the artifact is sealed: it is opened into a copy.
        let key =
            ArtifactKey::from_base64(b"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=").unwrap();
        let sealed = Store::filesystem(dir.to_str().unwrap())
            .unwrap()
            .with_key(Some(Arc::new(key)));
        assert_eq!(sealed.plain_local_file("ns/t/b1.db"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
