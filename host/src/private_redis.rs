//! A `redis-server` of our own, for when the config names none.
//!
//! It listens on a unix socket only (no TCP port), keeps its data
//! (append-only file) in `.eventhost/redis` beside the config so events
//! survive restarts, and writes its URL there so `eventhost publish` finds
//! it. It dies with us: stopped cleanly on shutdown, and killed by the
//! kernel if we are.
//!
//! Why no TCP port: a free port found by binding port 0 is free again once
//! closed, and until redis-server binds it (or after it died, while the URL
//! file still names it) any local user can listen there and read the
//! `AUTH` we send. The socket sits in a 0700 folder of ours, where no one
//! else can create or reach it. The server still requires a random
//! password, given to it in a config file (not on its command line, which
//! `ps` shows to everyone) and kept in the URL file; both, its data and
//! everything under `.eventhost` are readable by our user only (0700
//! folders, 0600 files). Clients that only speak TCP (LeanMQ's
//! constructor, `redis-cli -u`) are given the socket instead: see
//! docs/operating.md.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::process::{Child, Command};

use crate::config::{Config, Endpoint};

/// File, in the data folder, holding the URL of the running server, with
/// its password:
/// `unix:///<data folder>/redis.sock?db=0&user=default&pass=<password>`
/// (redis-rs's form). Mode 0600.
const URL_FILE: &str = "url";
/// The server's socket, in the data folder when its path fits in a
/// `sockaddr_un`.
const SOCKET_FILE: &str = "redis.sock";
/// Longest socket path the kernel accepts (`sun_path` is 108 bytes with its
/// terminating NUL).
const MAX_SOCKET_PATH: usize = 107;
/// The server's own config file, in the data folder: its password. Mode
/// 0600.
const CONF_FILE: &str = "redis.conf";

/// Creates `dir` and its missing parents readable by our user only, and
/// makes `dir` itself 0700 if it existed with a wider mode.
pub fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot make {} private", dir.display()))
}

/// Writes `text` to `path` readable by our user only (0600), replacing
/// what was there through a rename, so no reader ever sees it half-written
/// or with a wider mode.
pub fn write_private_file(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    drop(file);
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// A random password: 256 bits from the OS, hex.
fn random_password() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Where the socket goes: in `dir`, or, when that path is too long for a
/// socket address, in a fresh private (0700) folder under the temporary
/// folder, removed when the returned guard drops.
fn socket_path(dir: &Path) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    let path = dir.join(SOCKET_FILE);
    if path.as_os_str().len() <= MAX_SOCKET_PATH {
        return Ok((path, None));
    }
    let short = tempfile::Builder::new()
        .prefix("eventhost-redis-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .context("cannot create a private folder for redis-server's socket")?;
    Ok((short.path().join(SOCKET_FILE), Some(short)))
}

/// The URL redis-rs connects with: the socket, database 0, user and
/// password in the query (where redis-rs reads them for unix sockets).
fn socket_url(socket: &Path, password: &str) -> anyhow::Result<String> {
    let file = url::Url::from_file_path(socket)
        .map_err(|()| anyhow::anyhow!("{} is not an absolute path", socket.display()))?;
    // `file` is special to the URL standard and cannot become `unix` by
    // set_scheme; its encoded path is the same in either.
    let mut url = url::Url::parse(&format!("unix://{}", file.path()))
        .with_context(|| format!("cannot make a unix URL of {}", socket.display()))?;
    url.query_pairs_mut()
        .append_pair("db", "0")
        .append_pair("user", "default")
        .append_pair("pass", password);
    Ok(url.into())
}

/// A running private `redis-server`.
pub struct PrivateRedis {
    child: Child,
    url: String,
    dir: PathBuf,
    /// The socket's folder when it is not `dir` (removed on drop).
    _socket_dir: Option<tempfile::TempDir>,
}

impl PrivateRedis {
    /// Starts a server with its data in `dir`.
    ///
    /// Call it from the thread that outlives the server (the main thread):
    /// the kernel stops the child when the thread that started it exits.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        if let Some(parent) = dir.parent() {
            create_private_dir(parent)?;
        }
        create_private_dir(dir)
            .with_context(|| format!("cannot create the Redis data folder {}", dir.display()))?;
        // The URL names the socket by an absolute path, whatever our cwd.
        let dir = &std::fs::canonicalize(dir)
            .with_context(|| format!("cannot resolve {}", dir.display()))?;
        if let Some(url) = running_url(dir).await {
            bail!(
                "a private redis-server for this config is already running at {}; is another \
                 `eventhost run` using this config? Stop it, or set [redis] url to share a server",
                redacted(&url)
            );
        }
        // Data written by an older version, before files were private.
        tighten_files(dir);
        let (socket, socket_dir) = socket_path(dir)?;
        // A socket left by a server killed with us: nothing answers there.
        let _ = std::fs::remove_file(&socket);
        let password = random_password();
        let url = socket_url(&socket, &password)?;
        let conf = dir.join(CONF_FILE);
        write_private_file(&conf, &format!("requirepass {password}\n"))?;
        let log = dir.join("redis.log");
        let mut command = Command::new("redis-server");
        command
            .arg(&conf)
            // No TCP listener at all: nothing to race for.
            .args(["--port", "0"])
            .arg("--unixsocket")
            .arg(&socket)
            .args(["--unixsocketperm", "700"])
            .arg("--dir")
            .arg(dir)
            .args(["--appendonly", "yes", "--appendfsync", "everysec"])
            .args(["--save", ""])
            .args(["--daemonize", "no"])
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to
        // send SIGTERM to the child when its parent thread exits.
        // umask is too; the server's files (append-only file, log) are then
        // created readable by our user only.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::umask(0o077);
                Ok(())
            });
        }
        let child = command.spawn().map_err(|err| {
            if err.kind() == std::io::ErrorKind::NotFound {
                anyhow::anyhow!(
                    "redis-server is not installed, and [redis] url is not set. Install it \
                     (Debian/Ubuntu: `sudo apt-get install -y redis-server`; macOS: `brew install \
                     redis`) or point [redis] url at a running server"
                )
            } else {
                anyhow::anyhow!("cannot start redis-server: {err}")
            }
        })?;
        let mut server = PrivateRedis {
            child,
            url,
            dir: dir.to_path_buf(),
            _socket_dir: socket_dir,
        };
        server.wait_ready(&log).await?;
        write_private_file(&dir.join(URL_FILE), &server.url)?;
        tracing::info!(
            "started a private redis-server at {} with its data in {} (password in {}, readable \
             by this user only; set [redis] url to use your own)",
            redacted(&server.url),
            dir.display(),
            dir.join(URL_FILE).display()
        );
        Ok(server)
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Where the bus is for `config`: its `[redis]` endpoint, or else a
    /// private server started now (returned, to stop when done).
    pub async fn unless_configured(config: &Config) -> anyhow::Result<(Endpoint, Option<Self>)> {
        if let Some(endpoint) = &config.redis.endpoint {
            return Ok((endpoint.clone(), None));
        }
        let private = PrivateRedis::start(&config.state_dir.join("redis")).await?;
        Ok((Endpoint::Server(private.url().to_string()), Some(private)))
    }

    async fn wait_ready(&mut self, log: &Path) -> anyhow::Result<()> {
        let client = redis::Client::open(self.url.as_str())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                let said = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = said.lines().rev().take(5).collect();
                bail!(
                    "redis-server exited at start ({status}); its log {} ends with:\n{}",
                    log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                if redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
                {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "redis-server did not answer within 10 s; see {}",
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the server cleanly (it flushes its append-only file).
    pub async fn stop(mut self) {
        let _ = std::fs::remove_file(self.dir.join(URL_FILE));
        if let Some(pid) = self.child.id() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(_) => tracing::info!("private redis-server stopped"),
            Err(_) => {
                tracing::warn!("private redis-server did not stop within 10 s; killing it");
                let _ = self.child.kill().await;
            }
        }
    }
}

/// The URL of the private server started for the data folder `dir`, if one
/// is running and answers.
///
/// The URL file may outlive its server (a host killed with SIGKILL), so
/// before the password is sent the socket it names must be one only we
/// could have made: see [`socket_is_ours`].
pub async fn running_url(dir: &Path) -> Option<String> {
    let url = std::fs::read_to_string(dir.join(URL_FILE)).ok()?;
    let url = url.trim().to_string();
    if let Err(why) = socket_is_ours(&url) {
        tracing::warn!(file = %dir.join(URL_FILE).display(), "not using the private redis-server it names: {why}");
        return None;
    }
    let client = redis::Client::open(url.as_str()).ok()?;
    let mut conn = tokio::time::timeout(
        Duration::from_secs(1),
        client.get_multiplexed_async_connection(),
    )
    .await
    .ok()?
    .ok()?;
    redis::cmd("PING")
        .query_async::<String>(&mut conn)
        .await
        .ok()?;
    Some(url)
}

/// Whether `url` names a unix socket of ours in a folder only we may
/// write: whoever can write a folder can put a socket there, and would read
/// the password we send to it. A TCP URL (an older eventhost's) is not
/// trusted at all: its port may have been taken since.
fn socket_is_ours(url: &str) -> Result<(), String> {
    let info = redis::IntoConnectionInfo::into_connection_info(url)
        .map_err(|err| format!("not a Redis URL ({err})"))?;
    let redis::ConnectionAddr::Unix(socket) = info.addr() else {
        return Err("it is not a unix socket".into());
    };
    let folder = socket
        .parent()
        .ok_or_else(|| format!("{} has no folder", socket.display()))?;
    let meta = std::fs::metadata(folder).map_err(|err| format!("{}: {err}", folder.display()))?;
    crate::ownership::check(&meta).map_err(|err| format!("{}: {err}", folder.display()))?;
    let meta =
        std::fs::symlink_metadata(socket).map_err(|err| format!("{}: {err}", socket.display()))?;
    crate::ownership::check(&meta).map_err(|err| format!("{}: {err}", socket.display()))?;
    Ok(())
}

/// `url` without its password, for logs.
fn redacted(url: &str) -> String {
    crate::bus::connection::redact(url)
}

/// Makes the files in `dir` readable by our user only.
fn tighten_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let mode = if path.is_dir() { 0o700 } else { 0o600 };
        if let Err(err) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)) {
            tracing::warn!(file = %path.display(), "cannot make it private: {err}");
        }
        if path.is_dir() {
            tighten_files(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_and_folders_are_ours_only() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join(".eventhost/redis");
        create_private_dir(&state).unwrap();
        create_private_dir(&state).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&dir.path().join(".eventhost")), 0o700);
        let file = state.join("url");
        write_private_file(&file, "redis://:pw@127.0.0.1:1/0").unwrap();
        write_private_file(&file, "redis://:pw2@127.0.0.1:1/0").unwrap();
        assert_eq!(mode(&file), 0o600);
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "redis://:pw2@127.0.0.1:1/0"
        );
        std::fs::write(state.join("old.aof"), "x").unwrap();
        std::fs::set_permissions(
            state.join("old.aof"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        tighten_files(&state);
        assert_eq!(mode(&state.join("old.aof")), 0o600);
    }

    #[test]
    fn passwords_are_random_and_kept_out_of_logs() {
        let (a, b) = (random_password(), random_password());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        let url = socket_url(Path::new("/run/a b/redis.sock"), &a).unwrap();
        assert_eq!(
            url,
            format!("unix:///run/a%20b/redis.sock?db=0&user=default&pass={a}")
        );
        assert!(!redacted(&url).contains(&a), "{}", redacted(&url));
        let info = redis::IntoConnectionInfo::into_connection_info(url.as_str()).unwrap();
        assert_eq!(
            info.addr().to_string(),
            "/run/a b/redis.sock",
            "redis-rs reads the path back"
        );
    }

    #[test]
    fn a_socket_path_too_long_for_the_kernel_moves_to_a_private_temporary_folder() {
        let dir = tempfile::tempdir().unwrap();
        let (path, guard) = socket_path(dir.path()).unwrap();
        assert_eq!(path, dir.path().join(SOCKET_FILE));
        assert!(guard.is_none());
        let deep = dir.path().join("d".repeat(120));
        let (path, guard) = socket_path(&deep).unwrap();
        let guard = guard.expect("a short folder");
        assert!(
            path.as_os_str().len() <= MAX_SOCKET_PATH,
            "{}",
            path.display()
        );
        assert_eq!(path.parent().unwrap(), guard.path());
        let mode = std::fs::metadata(guard.path())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700);
    }
}
