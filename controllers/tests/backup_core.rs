//! The backup core against real etcd processes (the host's `etcd`), real
//! destinations (a directory; moto's S3 server started by `hack/s3-server`):
//! snapshot -> destination -> restore into a fresh etcd gives the same keys.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use etcd_client::{Client, GetOptions};
use kok_controllers::etcd::snapshot::{self, Snapshot};
use kok_controllers::etcd::verify::{
    self, free_port, restore_data_dir, Recorded, RestoreMember, ScratchEtcd, Tools, VerifyError,
};
use kok_controllers::storage::{S3Credentials, Store};
use kok_crds::S3Destination;
use kok_templates::backup::PrivateEndpoints;
use sha2::{Digest, Sha256};

/// A fresh single-member etcd with some history: puts, overwrites, deletes.
async fn source_etcd(dir: &Path) -> (ScratchEtcd, Client) {
    let tools = Tools::from_env();
    let peer = format!("http://127.0.0.1:{}", free_port().unwrap());
    let data = dir.join("source");
    let (etcd, mut client) = ScratchEtcd::start(
        &tools,
        &data,
        "source",
        &peer,
        &format!("source={peer}"),
        free_port().unwrap(),
    )
    .await
    .expect("etcd starts (is etcd-server installed? hack/ensure-build-deps)");
    for i in 0..300 {
        client
            .put(
                format!("/registry/things/{i:04}"),
                format!("value-{i}-{}", "x".repeat(i % 50)),
                None,
            )
            .await
            .unwrap();
    }
    for i in 0..50 {
        client
            .put(
                format!("/registry/things/{i:04}"),
                format!("updated-{i}"),
                None,
            )
            .await
            .unwrap();
    }
    for i in 250..300 {
        client
            .delete(format!("/registry/things/{i:04}"), None)
            .await
            .unwrap();
    }
    (etcd, client)
}

/// sha256 over every key and value in key order: the content, independent of history.
async fn content_hash(client: &mut Client) -> (usize, String) {
    let resp = client
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    let mut h = Sha256::new();
    for kv in resp.kvs() {
        h.update(kv.key());
        h.update([0]);
        h.update(kv.value());
        h.update([0]);
    }
    (resp.kvs().len(), snapshot::hex(&h.finalize()))
}

/// Restores the artifact into a brand-new etcd and returns its content.
async fn restore_and_read(
    store: &Store,
    key: &str,
    snap: &Snapshot,
    dir: &Path,
) -> (usize, String) {
    let tools = Tools::from_env();
    let file = dir.join("fetched.db");
    verify::download(store, key, &snap.sha256, &file)
        .await
        .unwrap();
    let peer = format!("http://127.0.0.1:{}", free_port().unwrap());
    let initial = format!("restored={peer}");
    let data = dir.join("restored");
    restore_data_dir(
        &tools,
        &file,
        &data,
        &RestoreMember {
            name: "restored",
            peer_url: &peer,
            initial_cluster: &initial,
            cluster_token: "restored-cluster",
            bump_revision: None,
        },
    )
    .await
    .unwrap();
    let (etcd, mut client) = ScratchEtcd::start(
        &tools,
        &data,
        "restored",
        &peer,
        &initial,
        free_port().unwrap(),
    )
    .await
    .unwrap();
    let content = content_hash(&mut client).await;
    etcd.stop().await;
    content
}

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[tokio::test]
async fn filesystem_backup_restores_to_identical_content() {
    let dir = scratch();
    let (source, mut client) = source_etcd(dir.path()).await;
    let store = Store::filesystem(dir.path().join("backups").to_str().unwrap()).unwrap();
    let snap = snapshot::take(&mut client, &store, "ns/demo/b1.db")
        .await
        .unwrap();
    let original = content_hash(&mut client).await;
    assert_eq!(original.0, 250, "the fixture holds 250 live keys");
    assert_eq!(snap.fingerprint.key_count, 250);
    assert_eq!(snap.size, store.size("ns/demo/b1.db").await.unwrap());
    assert!(store.location("ns/demo/b1.db").starts_with("file://"));
    // The member's cluster ID, as etcdctl shows it.
    let id = client
        .status()
        .await
        .unwrap()
        .header()
        .unwrap()
        .cluster_id();
    assert_eq!(snap.cluster_id, Some(id));
    assert_eq!(snapshot::cluster_id_hex(id), format!("{id:x}"));

    // Tenant data is private to the operator's user: the artifact 0600, the
    // directories kok made 0700, and no staging file left next to it.
    let root = dir.path().join("backups");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&root.join("ns/demo/b1.db")), 0o600);
    for d in [&root, &root.join("ns"), &root.join("ns/demo")] {
        assert_eq!(mode(d), 0o700, "{}", d.display());
    }
    let entries: Vec<_> = std::fs::read_dir(root.join("ns/demo"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, vec!["b1.db"]);

    // The proof kok records: the scratch restore reproduces count and HashKV.
    let tools = Tools::from_env();
    let restored = verify::verify(
        &store,
        "ns/demo/b1.db",
        &snap.sha256,
        &snap.fingerprint,
        &tools,
        dir.path(),
    )
    .await
    .unwrap();
    assert_eq!(restored.key_count, snap.fingerprint.key_count);
    assert_eq!(restored.kv_hash, snap.fingerprint.kv_hash);

    // And independently: every key and value is back.
    let back = restore_and_read(&store, "ns/demo/b1.db", &snap, dir.path()).await;
    assert_eq!(back, original);
    source.stop().await;
}

#[tokio::test]
async fn artifacts_are_private_even_in_directories_of_older_versions() {
    let dir = scratch();
    let (source, mut client) = source_etcd(dir.path()).await;
    let root = dir.path().join("backups");
    // As an older kok left it: world-readable directories.
    std::fs::create_dir_all(root.join("ns/demo")).unwrap();
    for d in [&root, &root.join("ns"), &root.join("ns/demo")] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let store = Store::filesystem(root.to_str().unwrap()).unwrap();
    snapshot::take(&mut client, &store, "ns/demo/b2.db")
        .await
        .unwrap();
    source.stop().await;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&root.join("ns/demo/b2.db")), 0o600);
    assert_eq!(mode(&root), 0o700, "the destination root is tightened");
    assert_eq!(
        mode(&root.join("ns/demo")),
        0o700,
        "the artifact's directory too"
    );
}

#[tokio::test]
async fn a_corrupted_or_truncated_artifact_is_refused() {
    let dir = scratch();
    let (source, mut client) = source_etcd(dir.path()).await;
    let root = dir.path().join("backups");
    let store = Store::filesystem(root.to_str().unwrap()).unwrap();
    let snap = snapshot::take(&mut client, &store, "b.db").await.unwrap();
    source.stop().await;
    let file: PathBuf = root.join("b.db");
    let tools = Tools::from_env();

    let mut bytes = std::fs::read(&file).unwrap();
    bytes[4096] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    let err = verify::verify(
        &store,
        "b.db",
        &snap.sha256,
        &snap.fingerprint,
        &tools,
        dir.path(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, VerifyError::Corrupt(_)), "{err}");

    // Even with a matching recorded sha256 (say the record was rewritten),
    // etcd's own trailer catches a flipped byte.
    let forged = snapshot::hex(&Sha256::digest(&bytes));
    let err = verify::download(&store, "b.db", &forged, &dir.path().join("x.db"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("trailer"), "{err}");

    bytes.truncate(bytes.len() / 2);
    std::fs::write(&file, &bytes).unwrap();
    let err = verify::verify(
        &store,
        "b.db",
        &snap.sha256,
        &snap.fingerprint,
        &tools,
        dir.path(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, VerifyError::Corrupt(_)), "{err}");
}

#[tokio::test]
async fn a_restore_with_different_content_fails_verification() {
    let dir = scratch();
    let (source, mut client) = source_etcd(dir.path()).await;
    let store = Store::filesystem(dir.path().join("backups").to_str().unwrap()).unwrap();
    let snap = snapshot::take(&mut client, &store, "b.db").await.unwrap();
    source.stop().await;
    let mut wrong = snap.fingerprint;
    wrong.key_count += 1;
    let err = verify::verify(
        &store,
        "b.db",
        &snap.sha256,
        &wrong,
        &Tools::from_env(),
        dir.path(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, VerifyError::Mismatch { .. }), "{err}");
}

fn hack(args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack/s3-server");
    let status = Command::new(&script).args(args).status().unwrap();
    assert!(status.success(), "hack/s3-server {args:?} failed");
}

#[tokio::test]
async fn s3_backup_restores_to_identical_content() {
    let endpoint = moto_endpoint();
    let store = s3_store(&endpoint, "it", "");
    let dir = scratch();
    let (source, mut client) = source_etcd(dir.path()).await;
    let key = format!("ns/demo/s3-{}.db", std::process::id());
    let snap = snapshot::take(&mut client, &store, &key).await.unwrap();
    assert_eq!(store.location(&key), format!("s3://kok-backups/it/{key}"));
    assert!(store.exists(&key).await.unwrap());
    let original = content_hash(&mut client).await;
    source.stop().await;
    let restored = verify::verify(
        &store,
        &key,
        &snap.sha256,
        &snap.fingerprint,
        &Tools::from_env(),
        dir.path(),
    )
    .await
    .unwrap();
    assert_eq!(restored.kv_hash, snap.fingerprint.kv_hash);
    assert_eq!(
        restore_and_read(&store, &key, &snap, dir.path()).await,
        original
    );
    store.delete(&key).await.unwrap();
    assert!(!store.exists(&key).await.unwrap());
}

/// With `spec.backup.encryption` the artifact at rest is ciphertext (no etcd
/// key or value readable in it), and it still restores to identical content
/// with the key, and only with the key.
#[tokio::test]
async fn encrypted_backup_restores_only_with_its_key() {
    use kok_controllers::storage::encryption::{ArtifactKey, MAGIC};
    use std::sync::Arc;
    let dir = scratch();
    let (source, mut client) = source_etcd(dir.path()).await;
    let root = dir.path().join("backups");
    let key = Arc::new(ArtifactKey::from_bytes(&[42u8; 32]).unwrap());
    let store = Store::filesystem(root.to_str().unwrap())
        .unwrap()
        .with_key(Some(key.clone()));
    assert_eq!(store.key_id().as_deref(), Some(key.id()));
    let snap = snapshot::take(&mut client, &store, "ns/demo/enc.db")
        .await
        .unwrap();
    let original = content_hash(&mut client).await;

    let at_rest = std::fs::read(root.join("ns/demo/enc.db")).unwrap();
    assert!(at_rest.starts_with(MAGIC));
    assert!(
        at_rest.len() as u64 > snap.size,
        "tags and header are added"
    );
    // The fixture's keys are `/registry/things/NNNN`: none is readable at rest.
    assert!(!at_rest.windows(16).any(|w| w == b"/registry/things"));
    assert_ne!(
        format!("{:x}", Sha256::digest(&at_rest)),
        snap.sha256,
        "the recorded sha256 is of the plaintext snapshot"
    );

    let back = restore_and_read(&store, "ns/demo/enc.db", &snap, dir.path()).await;
    assert_eq!(back, original);

    // Without a key, or with another one, nothing is restored.
    let keyless = Store::filesystem(root.to_str().unwrap()).unwrap();
    let file = dir.path().join("keyless.db");
    let err = verify::download(&keyless, "ns/demo/enc.db", &snap.sha256, &file)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("encrypted"), "{err}");
    let other = Store::filesystem(root.to_str().unwrap())
        .unwrap()
        .with_key(Some(Arc::new(ArtifactKey::from_bytes(&[7u8; 32]).unwrap())));
    let err = verify::download(&other, "ns/demo/enc.db", &snap.sha256, &file)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("does not decrypt"), "{err}");
    source.stop().await;
}

/// Filesystem artifacts are restored where they lie. With etcd's trailer on
/// record, another valid snapshot in the artifact's place is refused by the
/// recorded trailer and a flipped byte by `snapshot restore`'s own check;
/// with only the artifact's sha256 (older backups), a flipped byte is refused
/// by that check, and with a forged matching sha256 by etcd's trailer check.
#[tokio::test]
async fn an_in_place_restore_is_identical_and_refuses_corruption() {
    let dir = scratch();
    let (source, mut client) = source_etcd(dir.path()).await;
    let root = dir.path().join("backups");
    let store = Store::filesystem(root.to_str().unwrap()).unwrap();
    let snap = snapshot::take(&mut client, &store, "b.db").await.unwrap();
    let original = content_hash(&mut client).await;
    // Another valid snapshot of the same cluster, one write later: put in
    // the first one's place, only the recorded hashes can tell.
    client.put("/registry/later", "x", None).await.unwrap();
    let other = snapshot::take(&mut client, &store, "other.db")
        .await
        .unwrap();
    source.stop().await;
    let tools = Tools::from_env();
    let file = store.plain_local_file("b.db").unwrap();
    let peer = format!("http://127.0.0.1:{}", free_port().unwrap());
    let initial = format!("restored={peer}");
    let member = RestoreMember {
        name: "restored",
        peer_url: &peer,
        initial_cluster: &initial,
        cluster_token: "restored-cluster",
        bump_revision: None,
    };

    // With etcd's trailer on record (read once, by the restore) and, as
    // older backups are, with only the artifact's sha256.
    let by_trailer = Recorded {
        sha256: &snap.sha256,
        etcd_sha256: Some(&snap.etcd_sha256),
        size: Some(snap.size),
    };
    let by_sha256 = Recorded {
        etcd_sha256: None,
        size: None,
        ..by_trailer
    };
    for (i, recorded) in [by_trailer, by_sha256].iter().enumerate() {
        let data = dir.path().join(format!("in-place-{i}"));
        let size = verify::restore_in_place(&tools, &file, recorded, &data, &member)
            .await
            .unwrap();
        assert_eq!(size, snap.size);
        let (etcd, mut restored) = ScratchEtcd::start(
            &tools,
            &data,
            "restored",
            &peer,
            &initial,
            free_port().unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(content_hash(&mut restored).await, original);
        etcd.stop().await;
    }
    let refused = |what: &str| dir.path().join(format!("refused-{what}"));

    // The other snapshot in its place: refused by the recorded trailer.
    let pristine = std::fs::read(&file).unwrap();
    std::fs::copy(store.plain_local_file("other.db").unwrap(), &file).unwrap();
    let err = verify::restore_in_place(&tools, &file, &by_trailer, &refused("swap"), &member)
        .await
        .unwrap_err();
    assert!(matches!(err, VerifyError::Corrupt(_)), "{err}");
    assert_ne!(other.etcd_sha256, snap.etcd_sha256);

    // A flipped byte in the database: the trailer is still the recorded
    // one, so etcd's restore must be what refuses it.
    let mut bytes = pristine;
    bytes[4096] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    let err = verify::restore_in_place(&tools, &file, &by_trailer, &refused("flip"), &member)
        .await
        .unwrap_err();
    assert!(matches!(err, VerifyError::Tool { .. }), "{err}");
    let err = verify::restore_in_place(&tools, &file, &by_sha256, &refused("x"), &member)
        .await
        .unwrap_err();
    assert!(matches!(err, VerifyError::Corrupt(_)), "{err}");
    let forged = snapshot::hex(&Sha256::digest(&bytes));
    let forged = Recorded {
        sha256: &forged,
        ..by_sha256
    };
    let err = verify::restore_in_place(&tools, &file, &forged, &refused("y"), &member)
        .await
        .unwrap_err();
    assert!(matches!(err, VerifyError::Tool { .. }), "{err}");
}

/// The test S3 server (moto), started, with bucket `kok-backups`: its endpoint.
fn moto_endpoint() -> String {
    hack(&["start"]);
    hack(&["bucket", "kok-backups"]);
    std::env::var("KOK_TEST_S3_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:19000".into())
}

/// A store on bucket `kok-backups` under `prefix`; `allowed`: the operator's
/// private endpoint allowlist.
fn s3_store(endpoint: &str, prefix: &str, allowed: &str) -> Store {
    Store::s3(
        &S3Destination {
            bucket: "kok-backups".into(),
            prefix: Some(prefix.into()),
            endpoint: Some(endpoint.into()),
            region: "us-east-1".into(),
            credentials_secret: "unused-here".into(),
        },
        S3Credentials {
            access_key_id: "test".into(),
            secret_access_key: "test".into(),
            session_token: None,
        },
        &PrivateEndpoints::parse(allowed).unwrap(),
    )
    .unwrap()
}

/// A tenant names the endpoint: the operator's S3 client must not follow it
/// into the management network, by a name that resolves to a private address
/// or by a redirect.
#[tokio::test]
async fn s3_client_refuses_private_names_and_follows_no_redirect() {
    let endpoint = moto_endpoint();
    let port = endpoint.rsplit(':').next().unwrap().to_string();
    // An object that exists, written through the allowed address.
    let direct = s3_store(&endpoint, "guard", "");
    let mut w = direct.writer("present.db").await.unwrap();
    w.write(b"x").await.unwrap();
    w.finish().await.unwrap();
    assert!(direct.exists("present.db").await.unwrap());

    // `localhost` resolves to loopback: refused unless the operator allows it.
    let by_name = format!("http://localhost:{port}");
    let err = s3_store(&by_name, "guard", "")
        .exists("present.db")
        .await
        .unwrap_err();
    assert!(
        format!("{err:?}").contains("KOK_S3_PRIVATE_ENDPOINTS"),
        "{err:?}"
    );
    assert!(s3_store(&by_name, "guard", "127.0.0.0/8,::1")
        .exists("present.db")
        .await
        .unwrap());

    // A server that redirects every request to the real store.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let redirecting = format!("http://{}", listener.local_addr().unwrap());
    let target = endpoint.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut buf = vec![0u8; 8192];
            let n = conn.read(&mut buf).await.unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]).to_string();
            let path = request.split(' ').nth(1).unwrap_or("/").to_string();
            let reply = format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: {target}{path}\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = conn.write_all(reply.as_bytes()).await;
        }
    });
    let via_redirect = s3_store(&redirecting, "guard", "")
        .exists("present.db")
        .await;
    assert!(
        via_redirect.is_err(),
        "the redirect was followed: {via_redirect:?}"
    );
}
