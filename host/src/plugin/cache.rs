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
//!
//! An entry is two files: the code alone (`.cwasm`), which wasmtime maps
//! rather than copies into the host's memory, and its MAC (`.mac`). The
//! code is checked a piece at a time through the descriptor it is then
//! mapped from, so what was checked is what runs.

use std::io::{Read, Write as _};
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

/// What an entry's MAC file holds: the format, then the MAC.
const MAGIC: &[u8; 8] = b"EHCACHE2";
const MAC_LEN: usize = 32;
/// The key's file in the cache folder.
const KEY_FILE: &str = "key";
/// An entry's code, and its MAC beside it.
const ENTRY_EXTENSION: &str = "cwasm";
const MAC_EXTENSION: &str = "mac";
/// How much of the code is read at once, to check or to copy it.
const PIECE: usize = 1 << 16;

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
    /// MAC right; open, for the caller to map (see [`mappable`]). A use
    /// makes the entry the most recently used.
    pub fn load(&self, digest: &str) -> Option<std::fs::File> {
        let path = self.entry(digest);
        let ignore = |why: String| {
            tracing::warn!(file = %path.display(), "ignoring a compiled cache entry: {why}; compiling instead");
        };
        let open = |path: &Path| -> Result<Option<(std::fs::File, u64)>, String> {
            let file = match std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(path)
            {
                Ok(file) => file,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(err) => return Err(format!("cannot open {} ({err})", path.display())),
            };
            let meta = file
                .metadata()
                .map_err(|err| format!("cannot read {} ({err})", path.display()))?;
            private_file(&meta).map_err(|why| format!("{}: {why}", path.display()))?;
            Ok(Some((file, meta.len())))
        };
        let (mut mac_file, mac_len, mut code, len) =
            match (open(&path.with_extension(MAC_EXTENSION)), open(&path)) {
                (Ok(Some((mac_file, mac_len))), Ok(Some((code, len)))) => {
                    (mac_file, mac_len, code, len)
                }
                (Ok(None), _) | (_, Ok(None)) => return None,
                (Err(why), _) | (_, Err(why)) => {
                    ignore(why);
                    return None;
                }
            };
        if len > self.max_bytes {
            ignore(format!("it is larger ({len} bytes) than the cache may be"));
            return None;
        }
        let mut stored = [0u8; MAGIC.len() + MAC_LEN];
        if mac_len != stored.len() as u64
            || mac_file.read_exact(&mut stored).is_err()
            || &stored[..MAGIC.len()] != MAGIC
        {
            ignore("it is not an entry of this version of eventhost".into());
            return None;
        }
        let mut mac = self.mac_over(digest);
        let mut piece = vec![0u8; PIECE];
        let mut read = 0u64;
        loop {
            match code.read(&mut piece) {
                Ok(0) => break,
                Ok(n) => {
                    mac.update(&piece[..n]);
                    read += n as u64;
                }
                Err(err) => {
                    ignore(format!("cannot read it ({err})"));
                    return None;
                }
            }
        }
        let computed: [u8; MAC_LEN] = mac.finalize().into_bytes().into();
        if read != len || !constant_time_eq(&stored[MAGIC.len()..], &computed) {
            ignore("its MAC does not match (not compiled by this host from these bytes)".into());
            return None;
        }
        let _ = code.set_modified(SystemTime::now());
        Some(code)
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
            let size = (MAGIC.len() + MAC_LEN) as u64 + len;
            if size > self.max_bytes {
                anyhow::bail!(
                    "the entry ({} MiB) is larger than the cache's limit ({} MiB)",
                    size >> 20,
                    self.max_bytes >> 20
                );
            }
            let path = self.entry(digest);
            let mac_path = path.with_extension(MAC_EXTENSION);
            // `<entry>.cwasm.tmp<pid>`, `<entry>.mac.tmp<pid>`: no entry's
            // name, and not each other's.
            let tmp = |path: &Path| {
                let mut name = path.as_os_str().to_owned();
                name.push(format!(".tmp{}", std::process::id()));
                PathBuf::from(name)
            };
            let create = |path: &Path| {
                let _ = std::fs::remove_file(path);
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
            };
            let (code_tmp, mac_tmp) = (tmp(&path), tmp(&mac_path));
            let mut out = create(&code_tmp)?;
            let mut mac = self.mac_over(digest);
            let mut piece = vec![0u8; PIECE];
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
            drop(out);
            if copied != len {
                let _ = std::fs::remove_file(&code_tmp);
                anyhow::bail!(
                    "the compiled code changed while it was cached ({copied} of {len} bytes)"
                );
            }
            let mut out = create(&mac_tmp)?;
            out.write_all(MAGIC)?;
            out.write_all(&mac.finalize().into_bytes())?;
            drop(out);
            // Code first: between the renames a reader finds new code and
            // the old MAC, which does not match, and compiles.
            std::fs::rename(&code_tmp, &path)?;
            std::fs::rename(&mac_tmp, &mac_path)?;
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
            let _ = std::fs::remove_file(path.with_extension(MAC_EXTENSION));
            total -= len;
        }
        Ok(())
    }

    /// HMAC-SHA256 of what an entry proves: the source, the engine, the code.
    #[cfg(test)]
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

/// A path that opens `file` itself, for APIs that map a file by path
/// (wasmtime's `deserialize_file`): the inode checked through `file`, even
/// if its name was replaced since.
pub fn mappable(file: &std::fs::File) -> PathBuf {
    use std::os::fd::AsRawFd as _;
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
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

    /// What `load` proves and opens, read through the path it is mapped by.
    fn loaded(cache: &CompiledCache, digest: &str) -> Option<Vec<u8>> {
        cache
            .load(digest)
            .map(|file| std::fs::read(mappable(&file)).unwrap())
    }

    /// Copies the entry (code and MAC) of `digest` in `from` to the entry of
    /// `as_digest` in `to`.
    fn copy_entry(from: &CompiledCache, digest: &str, to: &CompiledCache, as_digest: &str) {
        for ext in [ENTRY_EXTENSION, MAC_EXTENSION] {
            std::fs::copy(
                from.entry(digest).with_extension(ext),
                to.entry(as_digest).with_extension(ext),
            )
            .unwrap();
        }
    }

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
        assert_eq!(loaded(&cache, &a).as_deref(), Some(code.as_slice()));
        assert_eq!(loaded(&cache, &b).as_deref(), Some(code.as_slice()));
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
        assert_eq!(loaded(&cache, &a), None);
        cache.store(&a, b"code of a");
        cache.store(&b, b"code of b");
        assert_eq!(mode(&cache.entry(&a)), 0o600);
        assert_eq!(mode(&cache.entry(&a).with_extension(MAC_EXTENSION)), 0o600);
        assert_eq!(loaded(&cache, &a).as_deref(), Some(&b"code of a"[..]));

        // b's entry copied over a's name is not a's.
        copy_entry(&cache, &b, &cache, &a);
        assert_eq!(loaded(&cache, &a), None);
        // Nor is anything someone without the key wrote.
        let mut forged = MAGIC.to_vec();
        forged.extend_from_slice(&[0; MAC_LEN]);
        std::fs::write(cache.entry(&a).with_extension(MAC_EXTENSION), forged).unwrap();
        std::fs::write(cache.entry(&a), b"forged code").unwrap();
        assert_eq!(loaded(&cache, &a), None);
        // Another engine's cache, or another key, does not accept b's entry.
        let other_engine = CompiledCache::open(&path, &"f".repeat(64), 1 << 20).unwrap();
        copy_entry(&cache, &b, &other_engine, &b);
        assert_eq!(loaded(&other_engine, &b), None);
        std::fs::remove_file(path.join(KEY_FILE)).unwrap();
        let new_key = CompiledCache::open(&path, &"e".repeat(64), 1 << 20).unwrap();
        assert_eq!(loaded(&new_key, &b), None);
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
        assert_eq!(loaded(&cache, &a), None);
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
        assert!(
            !cache
                .entry(&digests[1])
                .with_extension(MAC_EXTENSION)
                .exists(),
            "its MAC goes with it"
        );
        assert!(cache
            .entry(&digests[0])
            .with_extension(MAC_EXTENSION)
            .exists());
        assert!(cache.entry(&digests[2]).exists());
        // An entry larger than the whole cache is not kept.
        cache.store(&"e".repeat(64), &[0u8; 4000]);
        assert!(!cache.entry(&"e".repeat(64)).exists());
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().mode() & 0o777
    }
}
