//! The compiled cache: components compiled to native code, kept on disk so a
//! restart or a reload of a known build does not compile again.
//!
//! Loading an entry runs native code, so an entry is trusted only as far as
//! it is proven: the folder and its files must be ours and writable by no
//! one else, and each entry carries a MAC (HMAC-SHA256, with a key only this
//! user can read, kept in the folder) over the digest of the source it was
//! compiled from, the engine's fingerprint and the code itself. A file
//! copied over another plugin's name, one from another engine, or one
//! changed by anyone without the key is ignored and compiled again. Entries
//! are written only for builds that were accepted, and the folder is kept
//! under its size limit by removing the entries used least recently.

use std::io::{Read, Seek as _, Write as _};
use std::os::unix::fs::{
    DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context as _;
use hmac::{Hmac, KeyInit, Mac as _};
use sha2::Sha256;
use subtle::ConstantTimeEq as _;

use crate::ownership::{self, Untrusted};

/// What an entry file starts with: the format, then the MAC.
const MAGIC: &[u8; 8] = b"EHCACHE1";
const MAC_LEN: usize = 32;
/// The key's file in the cache folder.
const KEY_FILE: &str = "key";
const ENTRY_EXTENSION: &str = "cwasm";

/// One cache folder, checked and keyed.
pub struct CompiledCache {
    dir: PathBuf,
    key: [u8; 32],
    /// Which engine compiled the entries: settings and version, hashed.
    engine: String,
    /// The folder's size limit, in bytes (`[plugins] cache_mb`).
    max_bytes: u64,
}

impl CompiledCache {
    /// Opens the cache at `dir` for entries of the engine with fingerprint
    /// `engine`, making the folder and its key if needed. Fails when the
    /// folder or the key is not private to this user: then nothing is
    /// cached (every load compiles), which is slow but safe.
    pub fn open(dir: &Path, engine: &str, max_bytes: u64) -> anyhow::Result<Self> {
        private_dir(dir)?;
        let key = key(&dir.join(KEY_FILE))?;
        Ok(CompiledCache {
            dir: dir.to_path_buf(),
            key,
            engine: engine.to_string(),
            max_bytes,
        })
    }

    fn entry(&self, digest: &str) -> PathBuf {
        self.dir
            .join(format!("{digest}-{}.{ENTRY_EXTENSION}", &self.engine[..16]))
    }

    /// The compiled code of the source with SHA-256 `digest` (hex), if the
    /// cache holds an entry that proves it is that: ours, private, and its
    /// MAC right. A use makes the entry the most recently used.
    pub fn load(&self, digest: &str) -> Option<Vec<u8>> {
        let path = self.entry(digest);
        let ignore = |why: String| {
            tracing::warn!(file = %path.display(), "ignoring a compiled cache entry: {why}; compiling instead");
        };
        let mut file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
        {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return None,
            Err(err) => {
                ignore(format!("cannot open it ({err})"));
                return None;
            }
        };
        let meta = file.metadata().ok()?;
        if let Err(why) = private_file(&meta) {
            ignore(why);
            return None;
        }
        if meta.len() > self.max_bytes {
            ignore(format!(
                "it is larger ({} bytes) than the cache may be",
                meta.len()
            ));
            return None;
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        if let Err(err) = (&mut file).take(self.max_bytes).read_to_end(&mut bytes) {
            ignore(format!("cannot read it ({err})"));
            return None;
        }
        if bytes.len() < MAGIC.len() + MAC_LEN || &bytes[..MAGIC.len()] != MAGIC {
            ignore("it is not an entry of this version of eventhost".into());
            return None;
        }
        let (mac, code) = bytes[MAGIC.len()..].split_at(MAC_LEN);
        if !constant_time_eq(mac, &self.mac(digest, code)) {
            ignore("its MAC does not match (not compiled by this host from these bytes)".into());
            return None;
        }
        let _ = file.set_modified(SystemTime::now());
        bytes.drain(..MAGIC.len() + MAC_LEN);
        Some(bytes)
    }

    /// The cache's folder: private to us, so a compile's output may be
    /// written there before it becomes an entry.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Keeps `code`, compiled from the source with SHA-256 `digest`, then
    /// removes the least recently used entries past the size limit. Call it
    /// only for a build that was accepted. A failure is logged, not fatal.
    pub fn store(&self, digest: &str, code: &[u8]) {
        self.store_from(digest, &mut &code[..], code.len() as u64);
    }

    /// [`store`](Self::store) for code of `len` bytes read from `code` (a
    /// compiled file) a piece at a time: compiled code may be as large as
    /// the compile's memory limit, and is never held whole in memory here.
    pub fn store_from(&self, digest: &str, code: &mut dyn Read, len: u64) {
        let mut write = || -> anyhow::Result<()> {
            let size = MAGIC.len() as u64 + MAC_LEN as u64 + len;
            if size > self.max_bytes {
                anyhow::bail!(
                    "the entry ({} MiB) is larger than the cache's limit ({} MiB)",
                    size >> 20,
                    self.max_bytes >> 20
                );
            }
            let path = self.entry(digest);
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            let _ = std::fs::remove_file(&tmp);
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            // The MAC is known once the code went through: written last,
            // in the place kept for it.
            out.write_all(MAGIC)?;
            out.write_all(&[0; MAC_LEN])?;
            let mut mac = self.mac_over(digest);
            let mut piece = vec![0u8; 1 << 16];
            let mut copied = 0u64;
            loop {
                let n = code.read(&mut piece)?;
                if n == 0 {
                    break;
                }
                mac.update(&piece[..n]);
                out.write_all(&piece[..n])?;
                copied += n as u64;
            }
            if copied != len {
                anyhow::bail!(
                    "the compiled code changed while it was cached ({copied} of {len} bytes)"
                );
            }
            out.seek(std::io::SeekFrom::Start(MAGIC.len() as u64))?;
            out.write_all(&mac.finalize().into_bytes())?;
            drop(out);
            std::fs::rename(&tmp, &path)?;
            self.evict()
        };
        if let Err(err) = write() {
            tracing::warn!(dir = %self.dir.display(), "cannot cache a compiled plugin: {err:#}");
        }
    }

    /// Removes the least recently used entries until the folder is within
    /// its limit.
    fn evict(&self) -> anyhow::Result<()> {
        let mut entries: Vec<(SystemTime, u64, PathBuf)> = std::fs::read_dir(&self.dir)?
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == ENTRY_EXTENSION))
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                Some((meta.modified().ok()?, meta.len(), e.path()))
            })
            .collect();
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        entries.sort();
        for (_, len, path) in entries {
            if total <= self.max_bytes {
                break;
            }
            tracing::info!(file = %path.display(), "compiled cache over its limit: removing the entry used least recently");
            std::fs::remove_file(&path)?;
            total -= len;
        }
        Ok(())
    }

    /// HMAC-SHA256 of what an entry proves: the source, the engine, the code.
    fn mac(&self, digest: &str, code: &[u8]) -> [u8; MAC_LEN] {
        let mut mac = self.mac_over(digest);
        mac.update(code);
        mac.finalize().into_bytes().into()
    }

    /// The MAC of an entry for the source `digest`, the code still to come.
    fn mac_over(&self, digest: &str) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .expect("HMAC takes keys of any size");
        for part in [
            b"eventhost compiled cache v1\0".as_slice(),
            digest.as_bytes(),
            b"\0",
            self.engine.as_bytes(),
            b"\0",
        ] {
            mac.update(part);
        }
        mac
    }
}

/// Makes `dir` (0700) if needed, and checks it is ours and writable by no
/// one else; a folder of ours with looser modes is made private.
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create the compiled cache {}", dir.display()))?;
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        anyhow::bail!("{} is not a folder (a symlink?)", dir.display());
    }
    // Entries carry a MAC, so a folder of ours that others could write is
    // made private rather than refused; another user's is refused.
    if let Err(err @ Untrusted::OtherOwner { .. }) = ownership::check(&meta) {
        anyhow::bail!("{}: {err}: its code cannot be trusted", dir.display());
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private", dir.display()))?;
    }
    Ok(())
}

/// Whether an entry file with `meta` can be trusted as far as its owner and
/// modes go: a regular file of ours that no one else may write.
fn private_file(meta: &std::fs::Metadata) -> Result<(), String> {
    if !meta.is_file() {
        return Err("it is not a regular file".into());
    }
    ownership::check(meta).map_err(|err| err.to_string())
}

/// The cache's key at `path`: 32 random bytes, made once, readable by this
/// user only.
fn key(path: &Path) -> anyhow::Result<[u8; 32]> {
    if !path.exists() {
        let mut key = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut random| random.read_exact(&mut key))
            .context("cannot read /dev/urandom for the cache's key")?;
        // Written whole under another name, then linked into place: a
        // concurrent reader never sees half a key, and the first writer wins.
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        out.write_all(&key)?;
        drop(out);
        let linked = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        if let Err(err) = linked {
            if err.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(err).context("cannot write the cache's key");
            }
        }
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("cannot read the cache's key {}", path.display()))?;
    let meta = file.metadata()?;
    private_file(&meta)
        .map_err(|why| anyhow::anyhow!("the cache's key {}: {why}", path.display()))?;
    if meta.mode() & 0o077 != 0 {
        anyhow::bail!(
            "the cache's key {} is readable by others (mode {:o}); remove it",
            path.display(),
            meta.mode() & 0o777
        );
    }
    let mut key = [0u8; 32];
    file.read_exact(&mut key)
        .with_context(|| format!("the cache's key {} is too short; remove it", path.display()))?;
    Ok(key)
}

/// Compares two MACs in time that does not depend on where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// HMAC-SHA256 (RFC 2104) of the concatenation of `parts` under `key`.
    fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
        let mut mac =
            <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any size");
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2.
        let mac = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        // The entry's MAC is that HMAC over its parts, in this order.
        let dir = tempfile::tempdir().unwrap();
        let cache = CompiledCache::open(dir.path(), &"e".repeat(64), 1 << 20).unwrap();
        let digest = "d".repeat(64);
        assert_eq!(
            cache.mac(&digest, b"code"),
            hmac_sha256(
                &cache.key,
                &[
                    b"eventhost compiled cache v1\0",
                    digest.as_bytes(),
                    b"\0",
                    "e".repeat(64).as_bytes(),
                    b"\0",
                    b"code"
                ]
            )
        );
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn an_entry_stored_from_a_file_a_piece_at_a_time_is_the_same_entry() {
        let dir = tempfile::tempdir().unwrap();
        let cache =
            CompiledCache::open(&dir.path().join("cache"), &"e".repeat(64), 1 << 20).unwrap();
        // Longer than one piece, not a multiple of it.
        let code: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        cache.store(&a, &code);
        let file = dir.path().join("compiled");
        std::fs::write(&file, &code).unwrap();
        let mut reader = std::fs::File::open(&file).unwrap();
        cache.store_from(&b, &mut reader, code.len() as u64);
        assert_eq!(cache.load(&a).as_deref(), Some(code.as_slice()));
        assert_eq!(cache.load(&b).as_deref(), Some(code.as_slice()));
        let (entry_a, entry_b) = (
            std::fs::read(cache.entry(&a)).unwrap(),
            std::fs::read(cache.entry(&b)).unwrap(),
        );
        assert_eq!(entry_a.len(), entry_b.len());
        // A length that does not match what was read leaves no entry.
        let c = "c".repeat(64);
        let mut reader = std::fs::File::open(&file).unwrap();
        cache.store_from(&c, &mut reader, code.len() as u64 + 1);
        assert!(!cache.entry(&c).exists());
    }

    #[test]
    fn an_entry_loads_only_for_its_source_engine_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache");
        let cache = CompiledCache::open(&path, &"e".repeat(64), 1 << 20).unwrap();
        assert_eq!(mode(&path), 0o700);
        assert_eq!(mode(&path.join(KEY_FILE)), 0o600);
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        assert_eq!(cache.load(&a), None);
        cache.store(&a, b"code of a");
        cache.store(&b, b"code of b");
        assert_eq!(mode(&cache.entry(&a)), 0o600);
        assert_eq!(cache.load(&a).as_deref(), Some(&b"code of a"[..]));

        // b's entry copied over a's name is not a's.
        std::fs::copy(cache.entry(&b), cache.entry(&a)).unwrap();
        assert_eq!(cache.load(&a), None);
        // Nor is anything someone without the key wrote.
        let mut forged = MAGIC.to_vec();
        forged.extend_from_slice(&[0; MAC_LEN]);
        forged.extend_from_slice(b"forged code");
        std::fs::write(cache.entry(&a), forged).unwrap();
        assert_eq!(cache.load(&a), None);
        // Another engine's cache, or another key, does not accept b's entry.
        let other_engine = CompiledCache::open(&path, &"f".repeat(64), 1 << 20).unwrap();
        std::fs::copy(cache.entry(&b), other_engine.entry(&b)).unwrap();
        assert_eq!(other_engine.load(&b), None);
        std::fs::remove_file(path.join(KEY_FILE)).unwrap();
        let new_key = CompiledCache::open(&path, &"e".repeat(64), 1 << 20).unwrap();
        assert_eq!(new_key.load(&b), None);
    }

    #[test]
    fn entries_others_may_write_are_ignored_and_loose_folders_made_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache");
        std::fs::create_dir(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
        let cache = CompiledCache::open(&path, &"e".repeat(64), 1 << 20).unwrap();
        assert_eq!(mode(&path), 0o700);
        let a = "a".repeat(64);
        cache.store(&a, b"code");
        std::fs::set_permissions(cache.entry(&a), std::fs::Permissions::from_mode(0o666)).unwrap();
        assert_eq!(cache.load(&a), None);
    }

    #[test]
    fn the_least_recently_used_entries_go_past_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CompiledCache::open(dir.path(), &"e".repeat(64), 3200).unwrap();
        let digests: Vec<String> = ["a", "b", "c"].iter().map(|d| d.repeat(64)).collect();
        let old = SystemTime::now() - std::time::Duration::from_secs(100);
        for (i, digest) in digests.iter().enumerate() {
            cache.store(digest, &[0u8; 1000]);
            let file = std::fs::File::options()
                .write(true)
                .open(cache.entry(digest))
                .unwrap();
            file.set_modified(old + std::time::Duration::from_secs(i as u64))
                .unwrap();
        }
        // Using a makes b the least recently used; a fourth entry evicts it.
        assert!(cache.load(&digests[0]).is_some());
        cache.store(&"d".repeat(64), &[0u8; 1000]);
        assert!(cache.entry(&digests[0]).exists());
        assert!(
            !cache.entry(&digests[1]).exists(),
            "b was used least recently"
        );
        assert!(cache.entry(&digests[2]).exists());
        // An entry larger than the whole cache is not kept.
        cache.store(&"e".repeat(64), &[0u8; 4000]);
        assert!(!cache.entry(&"e".repeat(64)).exists());
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().mode() & 0o777
    }
}
