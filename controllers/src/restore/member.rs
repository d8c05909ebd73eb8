//! `kok-operator restore-member`: run by a restore Job on one etcd member's
//! volume (the member is stopped). Idempotent: a marker file records that this
//! restore already rebuilt the member, so a retried Job changes nothing.
//!
//! The previous data directory is kept, renamed `data.pre-restore-<id>`: a
//! restore never deletes data it did not create.
//!
//! Runs as the same non-root user as etcd (no chown needed: what it writes is
//! already etcd's). SIGTERM (the Job or its restore deleted) stops it before
//! the swap, leaving the member untouched; once the swap has begun it is
//! finished first, so a member never ends up without a data directory.

use std::path::{Path, PathBuf};

use kok_crds::Destination;
use tokio::signal::unix::{signal, SignalKind};

use crate::etcd::verify::{
    download, restore_data_dir, restore_in_place, Recorded, RestoreMember, Tools,
};
use crate::storage::encryption::ArtifactKey;
use crate::storage::s3_credentials;
use crate::storage::Store;

fn var(name: &str) -> anyhow::Result<String> {
    std::env::var(name).map_err(|_| anyhow::anyhow!("{name} is not set"))
}

pub async fn run() -> anyhow::Result<()> {
    // From here on SIGTERM no longer kills the process outright: it is
    // observed at the points where stopping is safe.
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        result = prepare_and_swap() => result,
        _ = terminate.recv() => {
            anyhow::bail!("terminated before the member's data was touched")
        }
    }
}

async fn prepare_and_swap() -> anyhow::Result<()> {
    let id = var("KOK_RESTORE_ID")?;
    let root = PathBuf::from(var("KOK_RESTORE_DATA_ROOT")?);
    let marker = root.join(format!(".kok-restored-{id}"));
    if marker.exists() {
        println!("member already restored by {id}; nothing to do");
        return Ok(());
    }
    let destination: Destination = serde_json::from_str(&var("KOK_RESTORE_DESTINATION")?)?;
    let creds = destination.s3.as_ref().and_then(|_| {
        let mut m = std::collections::BTreeMap::new();
        for (env, key) in [
            ("KOK_S3_ACCESS_KEY_ID", "accessKeyID"),
            ("KOK_S3_SECRET_ACCESS_KEY", "secretAccessKey"),
            ("KOK_S3_SESSION_TOKEN", "sessionToken"),
        ] {
            if let Ok(v) = std::env::var(env) {
                m.insert(key.to_string(), v);
            }
        }
        s3_credentials(&m)
    });
    let key = match std::env::var(kok_templates::restore::ARTIFACT_KEY_ENV) {
        Ok(text) => Some(std::sync::Arc::new(ArtifactKey::from_base64(
            text.as_bytes(),
        )?)),
        Err(_) => None,
    };
    // The operator's allowlist, passed on by the Job (empty: none).
    let private = kok_templates::backup::PrivateEndpoints::parse(
        &std::env::var(kok_templates::restore::PRIVATE_S3_ENV).unwrap_or_default(),
    )
    .map_err(|e| anyhow::anyhow!("{}: {e}", kok_templates::restore::PRIVATE_S3_ENV))?;
    // A filesystem destination on the operator's claim is fetched from the
    // operator; any other is opened as the operator opens it.
    let store = match std::env::var(kok_templates::restore::ARTIFACT_URL_ENV) {
        Ok(url) => Store::served(&url, &var(kok_templates::restore::ARTIFACT_TOKEN_ENV)?)?,
        Err(_) => Store::open(&destination, creds, &private)?,
    }
    .with_key(key);

    // Our own scratch names, safe to replace when a previous attempt died.
    let snapshot = root.join(format!("restore-{id}.db"));
    let staged = root.join(format!("restore-{id}.data"));
    remove_if_exists(&staged)?;
    let artifact = var("KOK_RESTORE_KEY")?;
    let sha256 = var("KOK_RESTORE_SHA256")?;
    let member = var("KOK_RESTORE_MEMBER")?;
    let (peer_url, initial_cluster, cluster_token) = (
        var("KOK_RESTORE_PEER_URL")?,
        var("KOK_RESTORE_INITIAL_CLUSTER")?,
        var("KOK_RESTORE_TOKEN")?,
    );
    let restore_member = RestoreMember {
        name: &member,
        peer_url: &peer_url,
        initial_cluster: &initial_cluster,
        cluster_token: &cluster_token,
        bump_revision: std::env::var("KOK_RESTORE_BUMP_REVISION")
            .ok()
            .map(|b| b.parse())
            .transpose()?,
    };
    let tools = Tools::from_env();
    // A plain artifact on the filesystem is restored where it lies
    // (read-only) while its sha256 is checked; otherwise it is fetched (and
    // opened) into a copy first. Either way nothing is swapped in unchecked.
    let copied = match store.plain_local_file(&artifact) {
        Some(file) => {
            let etcd_sha256 = std::env::var("KOK_RESTORE_ETCD_SHA256").ok();
            let recorded = Recorded {
                sha256: &sha256,
                etcd_sha256: etcd_sha256.as_deref(),
                size: None,
            };
            let size = restore_in_place(&tools, &file, &recorded, &staged, &restore_member).await?;
            match etcd_sha256 {
                Some(_) => println!(
                    "restored {size} bytes in place; etcd's sha256 trailer is the one recorded and the database matches it"
                ),
                None => println!("restored {size} bytes in place; sha256 verified"),
            }
            false
        }
        None => {
            let size = download(&store, &artifact, &sha256, &snapshot).await?;
            println!("fetched {size} bytes; sha256 and etcd trailer verified");
            restore_data_dir(&tools, &snapshot, &staged, &restore_member).await?;
            true
        }
    };
    // The swap: synchronous, no await point, so the select in `run` cannot
    // abandon it midway; a SIGTERM arriving now waits until it is done.
    swap(&root, &id, &staged, &marker)?;
    if copied {
        std::fs::remove_file(&snapshot)?;
    }
    println!("member {member} rebuilt from the snapshot");
    Ok(())
}

fn swap(root: &Path, id: &str, staged: &Path, marker: &Path) -> std::io::Result<()> {
    let data = root.join("data");
    let kept = root.join(format!("data.pre-restore-{id}"));
    if kept.exists() {
        // An earlier attempt of this restore already moved the original data
        // aside: what is in `data` now is that attempt's own output.
        remove_if_exists(&data)?;
    } else if data.exists() {
        std::fs::rename(&data, &kept)?;
        println!("previous data kept at {}", kept.display());
    }
    std::fs::rename(staged, &data)?;
    std::fs::write(marker, b"")?;
    Ok(())
}

fn remove_if_exists(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
