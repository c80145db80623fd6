//! A `redis-server` of our own, for when the config names none.
//!
//! It listens on a free loopback port, keeps its data (append-only file) in
//! `.eventhost/redis` beside the config so events survive restarts, and
//! writes its URL there so `eventhost publish` finds it. It dies with us:
//! stopped cleanly on shutdown, and killed by the kernel if we are.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::process::{Child, Command};

/// File, in the data folder, holding the URL of the running server.
const URL_FILE: &str = "url";

/// A running private `redis-server`.
pub struct PrivateRedis {
    child: Child,
    url: String,
    dir: PathBuf,
}

impl PrivateRedis {
    /// Starts a server with its data in `dir`.
    ///
    /// Call it from the thread that outlives the server (the main thread):
    /// the kernel stops the child when the thread that started it exits.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the Redis data folder {}", dir.display()))?;
        if let Some(url) = running_url(dir).await {
            bail!(
                "a private redis-server for this config is already running at {url}; is another \
                 `eventhost run` using this config? Stop it, or set [redis] url to share a server"
            );
        }
        let port = free_port()?;
        let log = dir.join("redis.log");
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
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
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
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
        let url = format!("redis://127.0.0.1:{port}/0");
        let mut server = PrivateRedis {
            child,
            url,
            dir: dir.to_path_buf(),
        };
        server.wait_ready(&log).await?;
        std::fs::write(dir.join(URL_FILE), &server.url)
            .with_context(|| format!("cannot write {}", dir.join(URL_FILE).display()))?;
        tracing::info!(
            "started a private redis-server at {} with its data in {} (set [redis] url to use your own)",
            server.url,
            dir.display()
        );
        Ok(server)
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.url
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
pub async fn running_url(dir: &Path) -> Option<String> {
    let url = std::fs::read_to_string(dir.join(URL_FILE)).ok()?;
    let url = url.trim().to_string();
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

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("no free loopback port")?;
    Ok(listener.local_addr()?.port())
}
