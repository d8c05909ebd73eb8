//! Optional encryption of backup artifacts at rest: AES-256-GCM in the STREAM
//! construction (Hoang, Reyhanitabar, Rogaway, Vizár 2015), so a snapshot of
//! any size is encrypted and decrypted in fixed-size chunks, in bounded
//! memory, and a truncated, reordered or spliced artifact fails to decrypt.
//!
//! Layout: `MAGIC` (8 bytes), a random 7-byte nonce prefix, then chunks of
//! `CHUNK` plaintext bytes sealed with a 16-byte tag; the last chunk (0 to
//! `CHUNK` bytes) is sealed with the last-chunk flag set. The nonce of chunk
//! `i` is `prefix || i (u32, big endian) || last (0 or 1)`.
//!
//! The key is 32 random bytes, base64-encoded, in a Secret named by
//! `spec.backup.encryption`. The sha256 kok records is of the plaintext
//! snapshot, so verification and restores check the same thing either way.

use std::sync::Arc;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

/// First bytes of an encrypted artifact (an etcd snapshot, a bbolt file,
/// never starts with them).
pub const MAGIC: &[u8; 8] = b"KOKAEAD1";
const PREFIX_LEN: usize = 7;
pub const HEADER_LEN: usize = MAGIC.len() + PREFIX_LEN;
/// Plaintext bytes per chunk.
pub const CHUNK: usize = 64 * 1024;
const TAG_LEN: usize = 16;
const SEALED_CHUNK: usize = CHUNK + TAG_LEN;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EncryptionError {
    #[error("the encryption key must be 32 random bytes, base64-encoded (e.g. `head -c 32 /dev/urandom | base64`): {0}")]
    BadKey(String),
    #[error("the artifact does not decrypt with this key (wrong key, or the artifact was altered or truncated)")]
    Decrypt,
    #[error("the artifact is encrypted: set spec.backup.encryption to the Secret holding its key")]
    KeyMissing,
    #[error("the artifact is too large to encrypt (more than 2^32 chunks)")]
    TooLarge,
    #[error("no random source: {0}")]
    Random(String),
}

/// The key artifacts are sealed with.
pub struct ArtifactKey {
    key: LessSafeKey,
    /// Names the key without revealing it: recorded on each EtcdBackup, so a
    /// restore with another key is refused before anything is stopped.
    id: String,
}

impl std::fmt::Debug for ArtifactKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl ArtifactKey {
    /// From the Secret's value: base64 of 32 bytes (surrounding whitespace,
    /// e.g. a trailing newline from `base64`, is ignored).
    pub fn from_base64(text: &[u8]) -> Result<Self, EncryptionError> {
        use base64::Engine as _;
        let text = std::str::from_utf8(text)
            .map_err(|_| EncryptionError::BadKey("not text".into()))?
            .trim();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| EncryptionError::BadKey(e.to_string()))?;
        Self::from_bytes(&raw)
    }

    pub fn from_bytes(raw: &[u8]) -> Result<Self, EncryptionError> {
        if raw.len() != 32 {
            return Err(EncryptionError::BadKey(format!(
                "it decodes to {} bytes",
                raw.len()
            )));
        }
        let key = UnboundKey::new(&AES_256_GCM, raw)
            .map_err(|_| EncryptionError::BadKey("rejected by AES-256-GCM".into()))?;
        let digest = Sha256::digest([b"kok artifact key id:".as_slice(), raw].concat());
        Ok(Self {
            key: LessSafeKey::new(key),
            id: super::hex(&digest[..8]),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

fn nonce(prefix: &[u8; PREFIX_LEN], counter: u32, last: bool) -> Nonce {
    let mut n = [0u8; 12];
    n[..PREFIX_LEN].copy_from_slice(prefix);
    n[PREFIX_LEN..11].copy_from_slice(&counter.to_be_bytes());
    n[11] = u8::from(last);
    Nonce::assume_unique_for_key(n)
}

/// Seals plaintext pushed in pieces of any size; output comes out in whole
/// chunks. Holds at most one chunk of plaintext.
pub struct Encryptor {
    key: Arc<ArtifactKey>,
    prefix: [u8; PREFIX_LEN],
    counter: u32,
    pending: Vec<u8>,
    header_sent: bool,
}

impl Encryptor {
    pub fn new(key: Arc<ArtifactKey>) -> Result<Self, EncryptionError> {
        let mut prefix = [0u8; PREFIX_LEN];
        SystemRandom::new()
            .fill(&mut prefix)
            .map_err(|_| EncryptionError::Random("the system RNG failed".into()))?;
        Ok(Self {
            key,
            prefix,
            counter: 0,
            pending: Vec::with_capacity(CHUNK),
            header_sent: false,
        })
    }

    /// Returns the sealed bytes ready to write (possibly none).
    pub fn push(&mut self, mut data: &[u8]) -> Result<Vec<u8>, EncryptionError> {
        let mut out = self.header();
        while !data.is_empty() {
            // A full chunk is sealed only once more data follows: until then
            // it may be the last one.
            if self.pending.len() == CHUNK {
                self.seal_pending(false, &mut out)?;
            }
            let take = (CHUNK - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        Ok(out)
    }

    /// Seals what is left as the last chunk.
    pub fn finish(mut self) -> Result<Vec<u8>, EncryptionError> {
        let mut out = self.header();
        self.seal_pending(true, &mut out)?;
        Ok(out)
    }

    fn header(&mut self) -> Vec<u8> {
        if self.header_sent {
            return Vec::new();
        }
        self.header_sent = true;
        [MAGIC.as_slice(), &self.prefix].concat()
    }

    fn seal_pending(&mut self, last: bool, out: &mut Vec<u8>) -> Result<(), EncryptionError> {
        let mut chunk = std::mem::replace(&mut self.pending, Vec::with_capacity(CHUNK));
        self.key
            .key
            .seal_in_place_append_tag(
                nonce(&self.prefix, self.counter, last),
                Aad::empty(),
                &mut chunk,
            )
            .map_err(|_| EncryptionError::TooLarge)?;
        self.counter = self
            .counter
            .checked_add(1)
            .ok_or(EncryptionError::TooLarge)?;
        out.extend_from_slice(&chunk);
        Ok(())
    }
}

/// Opens what an `Encryptor` sealed, pushed in pieces of any size. Holds at
/// most one sealed chunk plus one piece.
pub struct Decryptor {
    key: Arc<ArtifactKey>,
    prefix: Option<[u8; PREFIX_LEN]>,
    counter: u32,
    pending: Vec<u8>,
}

impl Decryptor {
    pub fn new(key: Arc<ArtifactKey>) -> Self {
        Self {
            key,
            prefix: None,
            counter: 0,
            pending: Vec::new(),
        }
    }

    pub fn push(&mut self, data: &[u8]) -> Result<Vec<u8>, EncryptionError> {
        self.pending.extend_from_slice(data);
        let mut out = Vec::new();
        if self.prefix.is_none() {
            if self.pending.len() < HEADER_LEN {
                return Ok(out);
            }
            if &self.pending[..MAGIC.len()] != MAGIC {
                return Err(EncryptionError::Decrypt);
            }
            let mut prefix = [0u8; PREFIX_LEN];
            prefix.copy_from_slice(&self.pending[MAGIC.len()..HEADER_LEN]);
            self.prefix = Some(prefix);
            self.pending.drain(..HEADER_LEN);
        }
        // Strictly more than one sealed chunk: the first is not the last.
        while self.pending.len() > SEALED_CHUNK {
            let rest = self.pending.split_off(SEALED_CHUNK);
            let sealed = std::mem::replace(&mut self.pending, rest);
            out.extend_from_slice(&self.open(sealed, false)?);
        }
        Ok(out)
    }

    pub fn finish(mut self) -> Result<Vec<u8>, EncryptionError> {
        if self.prefix.is_none() || self.pending.len() < TAG_LEN {
            return Err(EncryptionError::Decrypt);
        }
        let sealed = std::mem::take(&mut self.pending);
        self.open(sealed, true)
    }

    fn open(&mut self, mut sealed: Vec<u8>, last: bool) -> Result<Vec<u8>, EncryptionError> {
        let prefix = self.prefix.ok_or(EncryptionError::Decrypt)?;
        let len = self
            .key
            .key
            .open_in_place(
                nonce(&prefix, self.counter, last),
                Aad::empty(),
                &mut sealed,
            )
            .map_err(|_| EncryptionError::Decrypt)?
            .len();
        sealed.truncate(len);
        self.counter = self
            .counter
            .checked_add(1)
            .ok_or(EncryptionError::Decrypt)?;
        Ok(sealed)
    }
}

/// Decrypts a whole artifact from `input` to `output` in bounded memory
/// (`kok-operator decrypt-artifact`, for recovery by hand).
pub fn decrypt_stream(
    key: Arc<ArtifactKey>,
    input: &mut impl std::io::Read,
    output: &mut impl std::io::Write,
) -> std::io::Result<()> {
    let mut d = Decryptor::new(key);
    let mut buf = vec![0u8; CHUNK];
    let invalid = |e: EncryptionError| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        output.write_all(&d.push(&buf[..n]).map_err(invalid)?)?;
    }
    output.write_all(&d.finish().map_err(invalid)?)?;
    output.flush()
}

/// Whether an artifact starting with `head` is one kok encrypted.
pub fn is_encrypted(head: &[u8]) -> bool {
    head.starts_with(MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> Arc<ArtifactKey> {
        Arc::new(ArtifactKey::from_bytes(&[byte; 32]).unwrap())
    }

    fn seal(k: &Arc<ArtifactKey>, data: &[u8], piece: usize) -> Vec<u8> {
        let mut e = Encryptor::new(k.clone()).unwrap();
        let mut out = Vec::new();
        for p in data.chunks(piece.max(1)) {
            out.extend(e.push(p).unwrap());
        }
        out.extend(e.finish().unwrap());
        out
    }

    fn open(k: &Arc<ArtifactKey>, sealed: &[u8], piece: usize) -> Result<Vec<u8>, EncryptionError> {
        let mut d = Decryptor::new(k.clone());
        let mut out = Vec::new();
        for p in sealed.chunks(piece.max(1)) {
            out.extend(d.push(p)?);
        }
        out.extend(d.finish()?);
        Ok(out)
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn round_trips_at_every_chunk_boundary_and_piece_size() {
        let k = key(7);
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 5] {
            let plain = data(len);
            for (wpiece, rpiece) in [(1000, 777), (CHUNK, SEALED_CHUNK), (5 * CHUNK, 13)] {
                let sealed = seal(&k, &plain, wpiece);
                assert!(is_encrypted(&sealed));
                assert_ne!(&sealed[HEADER_LEN..], plain.as_slice());
                assert_eq!(open(&k, &sealed, rpiece).unwrap(), plain, "len {len}");
            }
        }
    }

    #[test]
    fn decrypt_stream_recovers_the_snapshot_by_hand() {
        let k = key(3);
        let plain = data(2 * CHUNK + 9);
        let sealed = seal(&k, &plain, 4096);
        let mut out = Vec::new();
        decrypt_stream(k.clone(), &mut sealed.as_slice(), &mut out).unwrap();
        assert_eq!(out, plain);
        let mut short = Vec::new();
        let cut = &sealed[..sealed.len() - 1];
        assert!(decrypt_stream(k, &mut &cut[..], &mut short).is_err());
    }

    #[test]
    fn the_same_plaintext_seals_differently_each_time() {
        let k = key(1);
        assert_ne!(seal(&k, b"etcd", 10), seal(&k, b"etcd", 10));
    }

    #[test]
    fn wrong_key_truncation_tampering_and_reordering_are_refused() {
        let k = key(9);
        let plain = data(3 * CHUNK + 100);
        let sealed = seal(&k, &plain, CHUNK);
        assert_eq!(open(&key(8), &sealed, 4096), Err(EncryptionError::Decrypt));
        // Cut at a chunk boundary: the new last chunk lacks the last flag.
        let cut = HEADER_LEN + 2 * SEALED_CHUNK;
        assert_eq!(
            open(&k, &sealed[..cut], 4096),
            Err(EncryptionError::Decrypt)
        );
        let mut flipped = sealed.clone();
        flipped[HEADER_LEN + 10] ^= 1;
        assert_eq!(open(&k, &flipped, 4096), Err(EncryptionError::Decrypt));
        let mut swapped = sealed.clone();
        let (a, b) = (HEADER_LEN, HEADER_LEN + SEALED_CHUNK);
        let first: Vec<u8> = swapped[a..b].to_vec();
        let second: Vec<u8> = swapped[b..b + SEALED_CHUNK].to_vec();
        swapped[a..b].copy_from_slice(&second);
        swapped[b..b + SEALED_CHUNK].copy_from_slice(&first);
        assert_eq!(open(&k, &swapped, 4096), Err(EncryptionError::Decrypt));
        assert_eq!(
            open(&k, b"plain etcd snapshot bytes", 8),
            Err(EncryptionError::Decrypt)
        );
    }

    #[test]
    fn keys_come_from_base64_of_32_bytes() {
        use base64::Engine as _;
        let text = base64::engine::general_purpose::STANDARD.encode([5u8; 32]);
        let k = ArtifactKey::from_base64(format!("{text}\n").as_bytes()).unwrap();
        assert_eq!(k.id(), key(5).id());
        assert_ne!(k.id(), key(6).id());
        assert_eq!(k.id().len(), 16);
        assert!(matches!(
            ArtifactKey::from_base64(b"c2hvcnQ="),
            Err(EncryptionError::BadKey(_))
        ));
        assert!(matches!(
            ArtifactKey::from_base64(b"not base64!"),
            Err(EncryptionError::BadKey(_))
        ));
        assert!(!format!("{k:?}").contains(&text));
    }
}
