//! Proving a backup restorable: fetch the artifact (checking its sha256 and
//! etcd's trailer), restore it with etcdutl/etcdctl into a scratch data
//! directory, run a throwaway etcd on loopback, and compare its keyspace
//! fingerprint with the one recorded when the snapshot was taken.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use etcd_client::Client;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::etcd::snapshot::{fingerprint_at, hex, Fingerprint, TrailerCheck};
use crate::storage::{DestinationError, Store};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Destination(#[from] DestinationError),
    #[error("the artifact is corrupt: {0}")]
    Corrupt(String),
    #[error("local I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("{tool} failed: {output}")]
    Tool { tool: String, output: String },
    #[error("the scratch etcd did not start: {0}")]
    ScratchEtcd(String),
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("the restored keyspace differs: recorded {recorded:?}, restored {restored:?}")]
    Mismatch {
        recorded: Fingerprint,
        restored: Fingerprint,
    },
}

/// The etcd binaries used to restore: `KOK_ETCD`, `KOK_ETCDUTL`, `KOK_ETCDCTL`
/// or those on PATH. etcdutl (3.5+) is preferred; etcdctl's restore works up to 3.5.
#[derive(Clone, Debug)]
pub struct Tools {
    pub etcd: PathBuf,
    pub restore: PathBuf,
    pub restore_is_etcdutl: bool,
}

impl Tools {
    pub fn from_env() -> Self {
        let find = |var: &str, name: &str| -> Option<PathBuf> {
            if let Ok(p) = std::env::var(var) {
                return Some(PathBuf::from(p));
            }
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join(name))
                    .find(|p| p.is_file())
            })
        };
        let etcd = find("KOK_ETCD", "etcd").unwrap_or_else(|| "etcd".into());
        match find("KOK_ETCDUTL", "etcdutl") {
            Some(etcdutl) => Self {
                etcd,
                restore: etcdutl,
                restore_is_etcdutl: true,
            },
            None => Self {
                etcd,
                restore: find("KOK_ETCDCTL", "etcdctl").unwrap_or_else(|| "etcdctl".into()),
                restore_is_etcdutl: false,
            },
        }
    }
}

/// Streams `key` into `file`, refusing it unless its sha256 is `expected_sha256`
/// and etcd's own trailer matches the content.
pub async fn download(
    store: &Store,
    key: &str,
    expected_sha256: &str,
    file: &Path,
) -> Result<u64, VerifyError> {
    // Tenant data: readable by the operator's user only, like the artifact.
    let mut out = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(file)
        .await?;
    let mut stream = store.read(key).await?;
    let mut whole = Sha256::new();
    let mut trailer = TrailerCheck::default();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        whole.update(&chunk);
        trailer.update(&chunk);
        size += chunk.len() as u64;
        out.write_all(&chunk).await?;
    }
    out.flush().await?;
    let actual = hex(&whole.finalize());
    if actual != expected_sha256 {
        return Err(VerifyError::Corrupt(format!(
            "sha256 is {actual}, the backup recorded {expected_sha256}"
        )));
    }
    trailer.finish().map_err(VerifyError::Corrupt)?;
    Ok(size)
}

/// Checks an artifact where it lies, without a copy: the sha256 the backup
/// recorded. etcd's own trailer is not hashed again here: the recorded sha256
/// covers it, and `snapshot restore` checks it itself.
pub async fn check_in_place(file: &Path, expected_sha256: &str) -> Result<u64, VerifyError> {
    let mut input = tokio::fs::File::open(file).await?;
    let mut buf = vec![0u8; 1 << 20];
    let mut whole = Sha256::new();
    let mut size = 0u64;
    loop {
        let n = input.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        whole.update(&buf[..n]);
        size += n as u64;
    }
    let actual = hex(&whole.finalize());
    if actual != expected_sha256 {
        return Err(VerifyError::Corrupt(format!(
            "sha256 is {actual}, the backup recorded {expected_sha256}"
        )));
    }
    Ok(size)
}

/// Restores a plain local artifact into `data_dir`, checked against what
/// the backup recorded. With etcd's own sha256 (the artifact's trailer) on
/// record, the artifact must end with it and `snapshot restore` checks the
/// database against it: the file is read once, by the restore. Without it
/// (older backups) the artifact's sha256 is checked while the restore reads
/// the same file. `data_dir` is a staging directory: on a mismatch the
/// caller never uses what was written there.
pub async fn restore_in_place(
    tools: &Tools,
    file: &Path,
    recorded: &Recorded<'_>,
    data_dir: &Path,
    member: &RestoreMember<'_>,
) -> Result<u64, VerifyError> {
    match recorded.etcd_sha256 {
        Some(etcd_sha256) => {
            let size = check_trailer(file, recorded.size, etcd_sha256).await?;
            restore_data_dir(tools, file, data_dir, member).await?;
            Ok(size)
        }
        None => {
            let (size, ()) = tokio::try_join!(
                check_in_place(file, recorded.sha256),
                restore_data_dir(tools, file, data_dir, member)
            )?;
            Ok(size)
        }
    }
}

/// What an EtcdBackup recorded about its artifact.
#[derive(Clone, Copy, Debug)]
pub struct Recorded<'a> {
    /// sha256 of the whole artifact.
    pub sha256: &'a str,
    /// etcd's sha256 of the database: the artifact's last 32 bytes.
    pub etcd_sha256: Option<&'a str>,
    pub size: Option<u64>,
}

/// The artifact has the recorded size and ends with the recorded trailer.
/// etcd's restore checks the trailer against the database only when the
/// file's length is 32 past a 512-byte boundary (and refuses files without
/// one), so the length is checked here too.
pub async fn check_trailer(
    file: &Path,
    size: Option<u64>,
    etcd_sha256: &str,
) -> Result<u64, VerifyError> {
    use tokio::io::AsyncSeekExt;
    let mut input = tokio::fs::File::open(file).await?;
    let len = input.metadata().await?.len();
    if let Some(size) = size.filter(|s| *s != len) {
        return Err(VerifyError::Corrupt(format!(
            "the artifact is {len} bytes, the backup recorded {size}"
        )));
    }
    if len < 32 || len % 512 != 32 {
        return Err(VerifyError::Corrupt(format!(
            "{len} bytes cannot be a database followed by etcd's sha256"
        )));
    }
    input.seek(std::io::SeekFrom::Start(len - 32)).await?;
    let mut trailer = [0u8; 32];
    input.read_exact(&mut trailer).await?;
    let actual = hex(&trailer);
    if actual != etcd_sha256 {
        return Err(VerifyError::Corrupt(format!(
            "the artifact ends with etcd sha256 {actual}, the backup recorded {etcd_sha256}"
        )));
    }
    Ok(len)
}

/// One member of a restored cluster.
pub struct RestoreMember<'a> {
    pub name: &'a str,
    pub peer_url: &'a str,
    /// `name=peer_url,...` of every member.
    pub initial_cluster: &'a str,
    pub cluster_token: &'a str,
    /// `--bump-revision` (with `--mark-compacted`): etcdutl only.
    pub bump_revision: Option<u64>,
}

/// Runs `etcdutl snapshot restore` (or etcdctl's) into `data_dir`, which must not exist.
pub async fn restore_data_dir(
    tools: &Tools,
    snapshot: &Path,
    data_dir: &Path,
    member: &RestoreMember<'_>,
) -> Result<(), VerifyError> {
    let mut cmd = Command::new(&tools.restore);
    cmd.arg("snapshot")
        .arg("restore")
        .arg(snapshot)
        .arg(format!("--data-dir={}", data_dir.display()))
        .arg(format!("--name={}", member.name))
        .arg(format!("--initial-cluster={}", member.initial_cluster))
        .arg(format!("--initial-cluster-token={}", member.cluster_token))
        .arg(format!("--initial-advertise-peer-urls={}", member.peer_url));
    if !tools.restore_is_etcdutl {
        cmd.env("ETCDCTL_API", "3");
    }
    if let Some(bump) = member.bump_revision {
        if !tools.restore_is_etcdutl {
            return Err(VerifyError::Tool {
                tool: tools.restore.display().to_string(),
                output: "a revision bump needs etcdutl (etcd 3.5 or newer)".into(),
            });
        }
        cmd.arg(format!("--bump-revision={bump}"))
            .arg("--mark-compacted");
    }
    // A restore abandoned halfway (its check failed) must not go on writing.
    cmd.kill_on_drop(true);
    let out = cmd.output().await?;
    if !out.status.success() {
        return Err(VerifyError::Tool {
            tool: tools.restore.display().to_string(),
            output: String::from_utf8_lossy(&out.stderr)
                .chars()
                .take(2000)
                .collect(),
        });
    }
    Ok(())
}

/// A throwaway single-member etcd on loopback; killed when dropped.
pub struct ScratchEtcd {
    child: Child,
    pub client_url: String,
}

impl ScratchEtcd {
    pub async fn start(
        tools: &Tools,
        data_dir: &Path,
        name: &str,
        peer_url: &str,
        initial_cluster: &str,
        client_port: u16,
    ) -> Result<(Self, Client), VerifyError> {
        let client_url = format!("http://127.0.0.1:{client_port}");
        let log = std::fs::File::create(data_dir.with_extension("log"))?;
        let child = Command::new(&tools.etcd)
            .arg(format!("--name={name}"))
            .arg(format!("--data-dir={}", data_dir.display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster={initial_cluster}"))
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        let mut scratch = Self { child, client_url };
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = scratch.child.try_wait() {
                return Err(VerifyError::ScratchEtcd(format!(
                    "exited with {status}; log: {}",
                    data_dir.with_extension("log").display()
                )));
            }
            if let Ok(mut c) = Client::connect([scratch.client_url.as_str()], None).await {
                if c.status().await.is_ok() {
                    return Ok((scratch, c));
                }
            }
            if start.elapsed() > Duration::from_secs(60) {
                let _ = scratch.child.kill().await;
                return Err(VerifyError::ScratchEtcd("not serving after 60s".into()));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A free loopback port (bound, then released for etcd to take).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Restores `key` into a scratch etcd under `workdir` and checks that it holds
/// exactly the keyspace recorded in `recorded`. The scratch directory is removed.
pub async fn verify(
    store: &Store,
    key: &str,
    sha256: &str,
    recorded: &Fingerprint,
    tools: &Tools,
    workdir: &Path,
) -> Result<Fingerprint, VerifyError> {
    let dir = workdir
        .join(format!("verify-{}", std::process::id()))
        .join(key.replace('/', "_"));
    let _ = tokio::fs::remove_dir_all(&dir).await; // only our own scratch space
    tokio::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .await?;
    let result = verify_in(store, key, sha256, recorded, tools, &dir).await;
    let _ = tokio::fs::remove_dir_all(&dir).await;
    result
}

async fn verify_in(
    store: &Store,
    key: &str,
    sha256: &str,
    recorded: &Fingerprint,
    tools: &Tools,
    dir: &Path,
) -> Result<Fingerprint, VerifyError> {
    let file = dir.join("snapshot.db");
    download(store, key, sha256, &file).await?;
    let peer_url = format!("http://127.0.0.1:{}", free_port()?);
    let initial_cluster = format!("scratch={peer_url}");
    let data_dir = dir.join("data");
    restore_data_dir(
        tools,
        &file,
        &data_dir,
        &RestoreMember {
            name: "scratch",
            peer_url: &peer_url,
            initial_cluster: &initial_cluster,
            cluster_token: "kok-verify",
            bump_revision: None,
        },
    )
    .await?;
    let (scratch, mut client) = ScratchEtcd::start(
        tools,
        &data_dir,
        "scratch",
        &peer_url,
        &initial_cluster,
        free_port()?,
    )
    .await?;
    let restored = fingerprint_at(&mut client, recorded.revision).await;
    scratch.stop().await;
    let restored = restored?;
    if restored.key_count != recorded.key_count || restored.kv_hash != recorded.kv_hash {
        return Err(VerifyError::Mismatch {
            recorded: *recorded,
            restored,
        });
    }
    Ok(restored)
}
