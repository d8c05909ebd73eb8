//! Taking a snapshot: the etcd maintenance snapshot stream goes straight to the
//! destination in bounded parts, hashed on the way (sha256 of the artifact, and
//! etcd's own sha256 trailer checked), with the revision, key count and
//! content hash recorded so a restore can be proven identical.

use etcd_client::{Client, GetOptions};
use sha2::{Digest, Sha256};

use crate::etcd::EtcdError;
use crate::storage::{DestinationError, Store};

/// etcd appends the sha256 of the database to the snapshot stream.
const ETCD_TRAILER: usize = 32;

#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub size: u64,
    /// sha256 of the whole artifact (database + etcd's trailer), hex.
    pub sha256: String,
    /// etcd's own sha256 of the database: the artifact's last 32 bytes, hex.
    /// `snapshot restore` checks the database against it.
    pub etcd_sha256: String,
    /// What the keyspace looked like at `revision`.
    pub fingerprint: Fingerprint,
    /// The etcd cluster the member belongs to (see [`cluster_id_hex`]).
    pub cluster_id: Option<u64>,
}

/// An etcd cluster ID as recorded in status (`etcdClusterID`): lowercase hex
/// without padding, as `etcdctl endpoint status` prints it.
pub fn cluster_id_hex(id: u64) -> String {
    format!("{id:x}")
}

/// Identity of a keyspace at a revision: a restore of the snapshot must
/// reproduce all of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    pub revision: i64,
    pub key_count: i64,
    /// etcd `HashKV(revision)`.
    pub kv_hash: u32,
    /// The compaction the hash was computed over (HashKV covers
    /// (compact_revision, revision]).
    pub compact_revision: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error(transparent)]
    Destination(#[from] DestinationError),
    #[error("the snapshot stream is corrupt: {0}")]
    Corrupt(String),
    #[error("etcd compacted its history while the snapshot was taken (revision {before} -> {after}); take it again")]
    CompactionRaced { before: i64, after: i64 },
}

impl From<etcd_client::Error> for SnapshotError {
    fn from(e: etcd_client::Error) -> Self {
        SnapshotError::Etcd(EtcdError::Etcd(e))
    }
}

/// Reads the keyspace's fingerprint at the current revision.
pub async fn fingerprint(etcd: &mut Client) -> Result<Fingerprint, etcd_client::Error> {
    let count = etcd
        .get(
            "",
            Some(GetOptions::new().with_all_keys().with_count_only()),
        )
        .await?;
    let revision = count.header().map(|h| h.revision()).unwrap_or_default();
    fingerprint_at(etcd, revision).await
}

/// The fingerprint at a past `revision` (it must not be compacted away).
pub async fn fingerprint_at(
    etcd: &mut Client,
    revision: i64,
) -> Result<Fingerprint, etcd_client::Error> {
    let count = etcd
        .get(
            "",
            Some(
                GetOptions::new()
                    .with_all_keys()
                    .with_count_only()
                    .with_revision(revision),
            ),
        )
        .await?;
    let hash = etcd.hash_kv(revision).await?;
    Ok(Fingerprint {
        revision,
        key_count: count.count(),
        kv_hash: hash.hash(),
        compact_revision: hash.compact_version(),
    })
}

/// Keys per range call when digesting a keyspace, at most.
const DIGEST_PAGE: i64 = 1000;
/// The largest page accepted: memory stays at one page of this size. A
/// page of large values that does not fit is asked again with fewer keys
/// (one etcd value is at most 1.5 MiB by default).
const DIGEST_PAGE_BYTES: usize = 64 << 20;

/// The keyspace at `revision` (0: the current one), digested per key prefix
/// page by page (see `kok_templates::migration::Digester`). Returns the
/// digests, the number of leased keys left out, and the revision read.
pub async fn digest_keyspace(
    etcd: &mut Client,
    revision: i64,
) -> Result<
    (
        std::collections::BTreeMap<String, kok_templates::migration::PrefixDigest>,
        u64,
        i64,
    ),
    etcd_client::Error,
> {
    let mut kv = etcd
        .kv_client()
        .max_decoding_message_size(DIGEST_PAGE_BYTES);
    let mut digester = kok_templates::migration::Digester::default();
    let mut revision = revision;
    let mut start = vec![0u8];
    let mut limit = DIGEST_PAGE;
    loop {
        let mut options = GetOptions::new().with_from_key().with_limit(limit);
        if revision > 0 {
            options = options.with_revision(revision);
        }
        let page = match kv.get(start.clone(), Some(options)).await {
            Ok(page) => page,
            Err(e) if limit > 1 && e.to_string().contains("message length too large") => {
                limit = (limit / 4).max(1);
                continue;
            }
            Err(e) => return Err(e),
        };
        // Every later page reads the revision the first one saw.
        if revision == 0 {
            revision = page.header().map(|h| h.revision()).unwrap_or(0);
        }
        for kv in page.kvs() {
            digester.add(kv.key(), kv.value(), kv.lease());
        }
        match page.kvs().last() {
            Some(last) if page.more() => {
                start = last.key().to_vec();
                start.push(0);
            }
            _ => break,
        }
    }
    let leased = digester.leased;
    Ok((digester.finish(), leased, revision))
}

/// Streams a snapshot of the member `etcd` is connected to into `key` of
/// `store`. Memory: one etcd chunk plus the destination's bounded parts.
/// On any failure the partial upload is aborted: nothing is left under `key`.
pub async fn take(etcd: &mut Client, store: &Store, key: &str) -> Result<Snapshot, SnapshotError> {
    let cluster_id = etcd.status().await?.header().map(|h| h.cluster_id());
    let before = fingerprint(etcd).await?;
    let mut writer = store.writer(key).await?;
    let streamed = stream_into(etcd, &mut writer).await;
    let (size, sha256, etcd_sha256) = match streamed {
        Ok(v) => v,
        Err(e) => {
            writer.abort().await;
            return Err(e);
        }
    };
    writer.finish().await?;
    // A compaction during the snapshot would make the recorded hash describe a
    // different history than the artifact holds.
    let after = fingerprint_at(etcd, before.revision).await?;
    if after.compact_revision != before.compact_revision {
        let _ = store.delete(key).await;
        return Err(SnapshotError::CompactionRaced {
            before: before.compact_revision,
            after: after.compact_revision,
        });
    }
    Ok(Snapshot {
        size,
        sha256,
        etcd_sha256,
        fingerprint: before,
        cluster_id,
    })
}

async fn stream_into(
    etcd: &mut Client,
    writer: &mut crate::storage::ArtifactWriter,
) -> Result<(u64, String, String), SnapshotError> {
    let mut stream = etcd.snapshot().await?;
    let mut check = TrailerCheck::default();
    let mut whole = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = stream.message().await? {
        let blob = chunk.blob();
        whole.update(blob);
        check.update(blob);
        size += blob.len() as u64;
        writer.write(blob).await?;
    }
    let etcd_sha256 = check.finish().map_err(SnapshotError::Corrupt)?;
    Ok((size, hex(&whole.finalize()), etcd_sha256))
}

/// Checks etcd's trailer (the last 32 bytes = sha256 of everything before)
/// over a stream, holding only the last 32 bytes seen.
#[derive(Default)]
pub struct TrailerCheck {
    hasher: Sha256,
    tail: Vec<u8>,
}

impl TrailerCheck {
    pub fn update(&mut self, data: &[u8]) {
        self.tail.extend_from_slice(data);
        if self.tail.len() > ETCD_TRAILER {
            let spill = self.tail.len() - ETCD_TRAILER;
            self.hasher.update(&self.tail[..spill]);
            self.tail.drain(..spill);
        }
    }

    /// The trailer (hex) when it matches the content.
    pub fn finish(self) -> Result<String, String> {
        if self.tail.len() < ETCD_TRAILER {
            return Err(format!("only {} bytes", self.tail.len()));
        }
        let computed = self.hasher.finalize();
        if computed.as_slice() == self.tail.as_slice() {
            Ok(hex(&self.tail))
        } else {
            Err(format!(
                "etcd's sha256 trailer {} does not match the content ({})",
                hex(&self.tail),
                hex(&computed)
            ))
        }
    }
}

pub use crate::storage::hex;

#[cfg(test)]
mod tests {
    use super::*;

    fn with_trailer(db: &[u8]) -> Vec<u8> {
        let mut v = db.to_vec();
        v.extend_from_slice(&Sha256::digest(db));
        v
    }

    #[test]
    fn cluster_ids_are_hex_as_etcdctl_prints_them() {
        assert_eq!(cluster_id_hex(0xcdf818194e3a8c32), "cdf818194e3a8c32");
        assert_eq!(cluster_id_hex(0x0a), "a");
    }

    #[test]
    fn trailer_check_accepts_any_chunking() {
        let artifact = with_trailer(&[7u8; 1000]);
        for chunk in [1, 5, 31, 32, 33, 999, 5000] {
            let mut c = TrailerCheck::default();
            for part in artifact.chunks(chunk) {
                c.update(part);
            }
            let trailer = hex(&artifact[artifact.len() - 32..]);
            assert_eq!(c.finish(), Ok(trailer), "chunk size {chunk}");
        }
    }

    #[test]
    fn trailer_check_refuses_a_flipped_byte_and_a_short_stream() {
        let mut artifact = with_trailer(&[7u8; 1000]);
        artifact[500] ^= 1;
        let mut c = TrailerCheck::default();
        c.update(&artifact);
        assert!(c.finish().unwrap_err().contains("does not match"));

        let mut c = TrailerCheck::default();
        c.update(&[1, 2, 3]);
        assert!(c.finish().is_err());
    }
}
