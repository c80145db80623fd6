//! What every end-to-end test needs: a real `redis-server` of its own, the
//! real `eventhost` binary, the plugins built for wasm32-wasip2, and ways to
//! look into Redis.
#![allow(dead_code)] // each test binary uses its own subset

pub mod attack;
pub mod cluster;
pub mod http_server;
pub mod receiver;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redis::Commands;
use serde_json::Value;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Every plugin crate the tests use.
const PLUGINS: &[&str] = &[
    "probe",
    "counter",
    "noop",
    "spin",
    "hog",
    "panic",
    "snoop",
    "not-a-plugin",
    "extra-import",
    "startloop",
    "hostile",
    "order-service",
    "payment-service",
    "provider",
];

/// Builds the plugins once per test binary; returns the folder of `.wasm`s.
pub fn plugins() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        build_plugins("the plugins", PLUGINS, &[]);
        root().join("target/wasm32-wasip2/plugin")
    })
}

/// A second build of the probe, which records `build:<id>` = "b" instead
/// of "a": hot-reload tests swap between the two. Built once, into its own
/// target folder so it never overwrites the first.
pub fn probe_b() -> &'static Path {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let target = root().join("target/probe-b");
        build_plugins(
            "probe b",
            &["probe"],
            &[
                ("PROBE_BUILD", OsStr::new("b")),
                ("CARGO_TARGET_DIR", target.as_os_str()),
            ],
        );
        target.join("wasm32-wasip2/plugin/probe.wasm")
    })
}

/// Runs `cargo build --profile plugin --target wasm32-wasip2` in the
/// workspace for `packages`, with `env`; fails the test, naming `what`,
/// with cargo's errors.
fn build_plugins(what: &str, packages: &[&str], env: &[(&str, &OsStr)]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(root())
        .args(["build", "--profile", "plugin", "--target", "wasm32-wasip2"])
        .envs(env.iter().copied());
    for p in packages {
        command.args(["-p", p]);
    }
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("running cargo to build {what}: {e}"));
    assert!(
        out.status.success(),
        "building {what} failed (is the wasm32-wasip2 target installed? \
         `rustup target add wasm32-wasip2`):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds the plugin project at `project` (relative to the workspace root,
/// e.g. a Python or JavaScript service of the orders example) with
/// `eventhost build`, once per test binary, and returns the component's
/// path, the last line `build` prints.
pub fn built_with_eventhost(project: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(path) = built.get(project) {
        return path.clone();
    }
    let started = Instant::now();
    let out = Command::new(eventhost_bin())
        .arg("build")
        .arg(root().join(project))
        .output()
        .unwrap_or_else(|e| panic!("running eventhost build {project}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "eventhost build {project} failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    assert!(path.is_file(), "eventhost build printed {stdout:?}");
    eprintln!("built {project} in {:.1?}", started.elapsed());
    built.insert(project.to_owned(), path.clone());
    path
}

/// Held by a test that measures an attack, so the attacks of the tests
/// running beside it in the same binary do not load the machine while it
/// measures (the bystander's throughput and latency are the point).
pub fn one_attack_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static ATTACK: Mutex<()> = Mutex::new(());
    ATTACK.lock().unwrap_or_else(|p| p.into_inner())
}

/// CPU time (user + system, seconds) the live process `pid` has used.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which ends with the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// The text of a Prometheus endpoint at `addr`.
pub fn scrape(addr: &str) -> String {
    use std::io::Read as _;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

/// The value of the counter `name{labels}` in a scrape, 0 if absent.
pub fn counter(scrape: &str, name_and_labels: &str) -> u64 {
    scrape
        .lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Compiled components shared by every test, so each plugin compiles once.
pub fn cache_dir() -> PathBuf {
    root().join("target/e2e-cache")
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `redis-server` of the test's own, stopped when dropped.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl Redis {
    /// A server without persistence.
    pub fn start() -> Redis {
        Redis::start_with(&[])
    }

    /// A server with extra arguments, e.g. `["--appendonly", "yes"]`.
    pub fn start_with(extra: &[&str]) -> Redis {
        let mut redis = Redis {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        redis.launch();
        redis
    }

    /// Starts the server (again) on its port and data folder.
    pub fn launch(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed: apt-get install -y redis-server");
        self.child = Some(child);
        eventually("redis-server answers", Duration::from_secs(10), || {
            redis::Client::open(self.url())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok()
        });
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// `redis://127.0.0.1:<port>/0`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// A fresh synchronous connection.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// Stops the server at once (no save) and starts it again on the same
    /// port and data folder.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Kills the server at once (SIGKILL): a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The probe as subscriber `probe`, of every event type: the config of
/// most worlds, or the start of it.
pub const PROBE: &str = "[subscribers.probe]\nplugin = \"probe.wasm\"\n";

/// A folder with an `eventhost.toml`, a `plugins/` folder and its own
/// Redis: one test's world.
pub struct World {
    pub dir: tempfile::TempDir,
    pub redis: Redis,
}

impl World {
    /// A world whose config is `subscribers` (TOML `[subscribers.*]`
    /// tables) under a `[redis]`/`[plugins]`/`[bus]` header pointing at its
    /// own Redis; `plugins` are copied in by name (e.g. `"probe.wasm"`).
    pub fn new(plugins_used: &[&str], subscribers: &str) -> World {
        World::with_redis(Redis::start(), plugins_used, subscribers)
    }

    /// The most common world: the probe, subscribed to `Ping`.
    pub fn probe() -> World {
        World::new(&["probe.wasm"], &format!("{PROBE}events = [\"Ping\"]\n"))
    }

    /// The probe as subscriber `probe`, its table ending with `extra`, in
    /// a world whose host watches its files (hot reload).
    pub fn watched(extra: &str) -> World {
        let world = World::new(&["probe.wasm"], "");
        world.configure_watched(&format!("{PROBE}{extra}"));
        world
    }

    /// The same, on a Redis started by the caller (e.g. with persistence).
    pub fn with_redis(redis: Redis, plugins_used: &[&str], subscribers: &str) -> World {
        let world = World {
            dir: tempfile::tempdir().unwrap(),
            redis,
        };
        fs::create_dir(world.dir.path().join("plugins")).unwrap();
        for p in plugins_used {
            world.install(p, p);
        }
        world.configure(subscribers);
        world
    }

    /// The standard header: this world's Redis, the shared compiled cache,
    /// and short idle times so reclaim tests run fast.
    pub fn header(&self) -> String {
        format!(
            "[redis]\nurl = \"{}\"\n\n[plugins]\ndir = \"plugins\"\nwatch = false\ncache_dir = \"{}\"\n\n[bus]\nclaim_idle_ms = 2000\n\n",
            self.redis.url(),
            cache_dir().display()
        )
    }

    /// Rewrites the config with the standard header and `subscribers`.
    pub fn configure(&self, subscribers: &str) {
        self.write_config(&format!("{}{subscribers}", self.header()));
    }

    /// The same with file watching on.
    pub fn configure_watched(&self, subscribers: &str) {
        let header = self.header().replace("watch = false", "watch = true");
        self.write_config(&format!("{header}{subscribers}"));
    }

    /// The same with `settings` (lines such as `"read_batch = 0\n"`) added
    /// to the `[bus]` table.
    pub fn configure_bus(&self, settings: &str, subscribers: &str) {
        let header = self
            .header()
            .replace("[bus]\n", &format!("[bus]\n{settings}"));
        self.write_config(&format!("{header}{subscribers}"));
    }

    /// The number (from 1) of the config's line that reads exactly `text`,
    /// to locate a problem the host reports.
    pub fn line_of(&self, text: &str) -> usize {
        let config = fs::read_to_string(self.config()).unwrap();
        config
            .lines()
            .position(|l| l == text)
            .unwrap_or_else(|| panic!("no line {text:?} in the config:\n{config}"))
            + 1
    }

    /// Writes the config file as given.
    pub fn write_config(&self, text: &str) {
        fs::write(self.config(), text).unwrap();
    }

    /// Copies the built plugin `built` into the plugins folder as `name`.
    pub fn install(&self, built: &str, name: &str) {
        self.install_file(&plugins().join(built), name);
    }

    /// Copies the component at `path` into the plugins folder as `name`.
    pub fn install_file(&self, path: &Path, name: &str) {
        fs::copy(path, self.dir.path().join("plugins").join(name))
            .unwrap_or_else(|e| panic!("copying {}: {e}", path.display()));
    }

    /// The config file's path.
    pub fn config(&self) -> PathBuf {
        self.dir.path().join("eventhost.toml")
    }

    /// Starts `eventhost run` on this world and waits until it serves.
    pub fn host(&self) -> Host {
        self.host_with_env(&[])
    }

    /// The same with extra environment variables.
    pub fn host_with_env(&self, env: &[(&str, &str)]) -> Host {
        Host::serving(&self.config(), env)
    }

    /// Starts `eventhost run` and gives it `limit` to serve: Python and
    /// JavaScript components take 10–40 s each to compile the first time,
    /// more on a busy machine.
    pub fn host_within(&self, limit: Duration) -> Host {
        let mut host = Host::start_with_env(&self.config(), &[]);
        host.wait_for_log_within("eventhost running", limit);
        host
    }

    /// A connection to this world's Redis.
    pub fn conn(&self) -> redis::Connection {
        self.redis.conn()
    }

    /// Runs the `eventhost` binary with `args` to completion.
    pub fn eventhost(&self, args: &[&str]) -> std::process::Output {
        eventhost_in(self.dir.path(), args)
    }

    /// Runs `check` and then `run`, which must both refuse the config
    /// (exit 1); returns what `check` printed (stdout) and what `run`
    /// printed (stderr).
    pub fn refused(&self) -> (String, String) {
        let check = self.eventhost(&["check"]);
        assert_eq!(check.status.code(), Some(1), "check refuses the config");
        let run = self.eventhost(&["run"]);
        assert_eq!(run.status.code(), Some(1), "run refuses the config");
        (
            String::from_utf8_lossy(&check.stdout).into_owned(),
            String::from_utf8_lossy(&run.stderr).into_owned(),
        )
    }
}

/// A running `eventhost run`, killed when dropped; its log is printed if
/// the test fails.
pub struct Host {
    child: Option<Child>,
    log: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl Host {
    /// Starts `eventhost run --config <config>`.
    pub fn start(config: &Path) -> Host {
        Host::start_with_env(config, &[])
    }

    /// Starts it with extra environment variables and waits until it
    /// serves.
    pub fn serving(config: &Path, env: &[(&str, &str)]) -> Host {
        let mut host = Host::start_with_env(config, env);
        host.wait_for_log("eventhost running");
        host
    }

    /// Starts it with extra environment variables.
    pub fn start_with_env(config: &Path, env: &[(&str, &str)]) -> Host {
        let mut command = Command::new(eventhost_bin());
        command
            .args(["run", "--config"])
            .arg(config)
            .envs(env.iter().copied());
        Host::spawn(command)
    }

    /// Starts `command` as the host; its stderr is the log.
    pub fn spawn(mut command: Command) -> Host {
        let log_dir = tempfile::tempdir().unwrap();
        let log = log_dir.path().join("host.log");
        let file = fs::File::create(&log).unwrap();
        if std::env::var_os("EVENTHOST_LOG").is_none() {
            command.env("EVENTHOST_LOG", "info");
        }
        let child = command.stdout(Stdio::null()).stderr(file).spawn().unwrap();
        Host {
            child: Some(child),
            log,
            _log_dir: log_dir,
        }
    }

    /// Everything the host logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `text`; fails at once if the host
    /// exits first.
    pub fn wait_for_log(&mut self, text: &str) {
        self.wait_for_log_within(text, Duration::from_secs(60));
    }

    /// The same, with another time limit.
    pub fn wait_for_log_within(&mut self, text: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.log().contains(text) {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "the host exited ({status}) before logging {text:?}:\n{}",
                    self.log()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "the host did not log {text:?} within {limit:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Whether the process is still alive.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_none()
    }

    /// The host's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends `signal` to the host.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.pid() as i32, signal);
        }
    }

    /// SIGTERM, then waits for the exit (at most 30 s).
    pub fn stop(mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "the host did not stop within 30 s of SIGTERM:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: a crash, nothing is finished or committed.
    pub fn kill(mut self) {
        let mut child = self.child.take().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let _ = writeln!(
                std::io::stderr(),
                "----- host log -----\n{}\n--------------------",
                self.log()
            );
        }
    }
}

/// Publishes `Ping`s at about `per_second` until stopped; remembers when
/// each was published.
pub struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<Mutex<Vec<(String, Instant)>>>,
    thread: Option<JoinHandle<()>>,
}

impl Load {
    /// Starts publishing on a connection of its own to `world`'s Redis.
    pub fn start(world: &World, per_second: u32) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let mut conn = world.conn();
        let thread = {
            let (stop, sent) = (stop.clone(), sent.clone());
            std::thread::spawn(move || {
                let gap = Duration::from_secs(1) / per_second;
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let id = publish(&mut conn, "Ping", serde_json::json!({}));
                    sent.lock().unwrap().push((id, Instant::now()));
                    next += gap;
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
            })
        };
        Load {
            stop,
            sent,
            thread: Some(thread),
        }
    }

    /// The events sent so far and when.
    pub fn sent(&self) -> Vec<(String, Instant)> {
        self.sent.lock().unwrap().clone()
    }

    /// Stops publishing; returns every event sent and when.
    pub fn finish(mut self) -> Vec<(String, Instant)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        std::mem::take(&mut *self.sent.lock().unwrap())
    }
}

/// Publishes a plain event to each of `subscribers` (each subscribed to
/// `Ping`) and waits up to 20 s until every one of them has handled it:
/// the host still serves.
pub fn still_serves(world: &World, subscribers: &[&str]) {
    let mut conn = world.conn();
    let id = publish(&mut conn, "Ping", serde_json::json!({}));
    eventually(
        "the host still handles events",
        Duration::from_secs(20),
        || {
            subscribers
                .iter()
                .all(|s| state(&mut conn, s).contains_key(&format!("seen:{id}")))
        },
    );
}

/// The binary under test: `EVENTHOST_BIN` if set (a release build, or a
/// copy no other checkout's build overwrites), else the one cargo built.
pub fn eventhost_bin() -> PathBuf {
    std::env::var_os("EVENTHOST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_eventhost")))
}

/// Runs the `eventhost` binary with `args` to completion in `dir`.
pub fn eventhost_in(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(eventhost_bin())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

/// Polls every 20 ms until `done`, failing with the host's log if that
/// takes 10 minutes from `started`: a benchmark's wait for its events.
pub fn wait_on_host(host: &Host, started: Instant, mut done: impl FnMut() -> bool) {
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "stuck:\n{}",
            host.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `check` until it holds, or panics naming `what`.
pub fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Publishes like a LeanMQ producer: `data` plus `event_type`, `event_id`
/// and `_metadata`, XADDed to `events:all`. Returns the event id.
pub fn publish(conn: &mut redis::Connection, event_type: &str, data: Value) -> String {
    let (id, text) = leanmq_event(event_type, data);
    xadd(conn, "events:all", &text);
    id
}

/// [`publish`] of `n` events of `data` in one pipeline (one round trip):
/// a burst that measures the host, not the publisher's round trips.
pub fn publish_burst(
    conn: &mut redis::Connection,
    event_type: &str,
    data: Value,
    n: usize,
) -> Vec<String> {
    let mut pipe = redis::pipe();
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let (id, text) = leanmq_event(event_type, data.clone());
        pipe.xadd("events:all", "*", &[("data", text)]).ignore();
        ids.push(id);
    }
    let () = pipe.query(conn).unwrap();
    ids
}

/// An event as a LeanMQ producer writes it: its id and its `data` field.
fn leanmq_event(event_type: &str, data: Value) -> (String, String) {
    let mut object = match data {
        Value::Object(object) => object,
        other => panic!("publish takes an object, got {other}"),
    };
    let id = uuid::Uuid::new_v4().to_string();
    object.insert("event_type".into(), event_type.into());
    object.insert("event_id".into(), id.clone().into());
    object.insert(
        "_metadata".into(),
        serde_json::json!({"id": id, "timestamp": 1.0, "ttl": null}),
    );
    (id, Value::Object(object).to_string())
}

/// Adds one raw entry `data=<text>` to `stream`.
pub fn xadd(conn: &mut redis::Connection, stream: &str, text: &str) -> String {
    xadd_field(conn, stream, "data", text.as_bytes())
}

/// Adds one entry of a single field, any bytes (a field other than `data`,
/// or data that is not UTF-8), to `stream`.
pub fn xadd_field(conn: &mut redis::Connection, stream: &str, field: &str, value: &[u8]) -> String {
    conn.xadd(stream, "*", &[(field, value)]).unwrap()
}

/// The entries of `stream`, their `data` parsed as JSON (or a string if it
/// is not JSON).
pub fn entries(conn: &mut redis::Connection, stream: &str) -> Vec<(String, Value)> {
    type Entry = (String, Vec<(String, Vec<u8>)>);
    let reply: Vec<Entry> = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query(conn)
        .unwrap();
    reply
        .into_iter()
        .map(|(id, fields)| {
            let data = fields
                .into_iter()
                .find(|(k, _)| k == "data")
                .map(|(_, v)| {
                    let text = String::from_utf8_lossy(&v).into_owned();
                    serde_json::from_str(&text).unwrap_or(Value::String(text))
                })
                .unwrap_or(Value::Null);
            (id, data)
        })
        .collect()
}

/// Entries of `stream`, only their data.
pub fn data_of(conn: &mut redis::Connection, stream: &str) -> Vec<Value> {
    entries(conn, stream).into_iter().map(|(_, d)| d).collect()
}

/// Number of entries of `stream`.
pub fn len(conn: &mut redis::Connection, stream: &str) -> usize {
    conn.xlen(stream).unwrap()
}

/// Entries delivered to `group` of `stream` but not acknowledged.
pub fn pending(conn: &mut impl redis::ConnectionLike, stream: &str, group: &str) -> u64 {
    let reply: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query(conn)
        .unwrap();
    match reply {
        redis::Value::Array(parts) => match parts.first() {
            Some(redis::Value::Int(n)) => *n as u64,
            _ => 0,
        },
        _ => 0,
    }
}

/// A subscriber's state hash.
pub fn state(conn: &mut redis::Connection, subscriber: &str) -> HashMap<String, String> {
    conn.hgetall(format!("events:state:{subscriber}")).unwrap()
}

/// The last failure record of the dead letter of event `id` in `dlq`.
pub fn failure_of(conn: &mut redis::Connection, dlq: &str, id: &str) -> Value {
    let dead = data_of(conn, dlq);
    let entry = dead
        .iter()
        .find(|d| d["event_id"] == id)
        .unwrap_or_else(|| panic!("{id} is not in {dlq}: {dead:#?}"));
    entry["_failures"]
        .as_array()
        .and_then(|f| f.last())
        .cloned()
        .unwrap_or_else(|| panic!("{id} in {dlq} has no failure record: {entry:#}"))
}

/// The reason of the last failure of event `id` in `dlq`.
pub fn reason_of(conn: &mut redis::Connection, dlq: &str, id: &str) -> String {
    failure_of(conn, dlq, id)["reason"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The reasons of the last failure of every entry in a DLQ.
pub fn dlq_reasons(conn: &mut redis::Connection, dlq: &str) -> Vec<String> {
    data_of(conn, dlq)
        .iter()
        .map(|d| {
            d["_failures"]
                .as_array()
                .and_then(|f| f.last())
                .and_then(|f| f["reason"].as_str())
                .unwrap_or("<no reason>")
                .to_string()
        })
        .collect()
}

/// Whether `subscriber` has handled every event of `ids` (committed its
/// `seen:<id>`).
pub fn seen_all(conn: &mut redis::Connection, subscriber: &str, ids: &[String]) -> bool {
    let state = state(conn, subscriber);
    ids.iter()
        .all(|id| state.contains_key(&format!("seen:{id}")))
}

/// Whether everything the bus read has been acknowledged: no entry pending
/// in `events:all` or any of `subscribers`' streams.
pub fn settled(conn: &mut redis::Connection, subscribers: &[&str]) -> bool {
    pending(conn, "events:all", "all-group") == 0
        && subscribers
            .iter()
            .all(|s| pending(conn, &format!("events:sub:{s}"), &format!("sub:{s}-group")) == 0)
}

/// `GET path` on `addr`: the status code and the body.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let code = reply
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {reply}"));
    let body = reply
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_string();
    (code, body)
}
