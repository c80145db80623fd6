//! What a plugin can and cannot reach: no files, environment, sockets or
//! name lookups, and only its own state; what its `grants` name and
//! nothing more, and never the config, plugins, cache or state folders;
//! no import the host does not offer. And what no one reaches without
//! the host: its private Redis (a password kept private) and its state
//! folder (0700, 0600). The real `eventhost` binary against a real
//! `redis-server`, asserting on what ends up in Redis.

mod support;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use redis::Commands;
use serde_json::json;
use support::attack::peak_mib;
use support::*;

const WAIT: Duration = Duration::from_secs(20);

// ----- no files, environment, sockets, nor another plugin's state -------

/// A plugin gets no files (read, list, write), no environment, no sockets
/// (TCP connect and listen, UDP, name lookup): the snoop plugin records
/// each attempt as `denied: <error>`. The host runs with an extra
/// variable `SECRET` that must not leak, and the snoop connects to the
/// test's own `redis-server`, which is listening, so the refusal is the
/// sandbox's and not a closed port's.
#[test]
fn a_plugin_gets_no_files_environment_or_sockets() {
    let world = World::new(&["snoop.wasm", "probe.wasm"], "");
    let redis_addr = format!("127.0.0.1:{}", world.redis.port);
    std::net::TcpStream::connect(&redis_addr)
        .expect("the test's redis-server listens: a plugin's connect could succeed");
    world.configure(&format!(
        r#"
[subscribers.snoop]
plugin = "snoop.wasm"
events = ["Snoop"]
[subscribers.snoop.config]
connect = "{redis_addr}"

[subscribers.probe]
plugin = "probe.wasm"
events = ["Ping"]
"#
    ));
    let host = world.host_with_env(&[("SECRET", "1"), ("EVENTHOST_SANDBOX_TEST", "visible?")]);
    let mut conn = world.conn();

    let id = publish(&mut conn, "Snoop", json!({}));
    eventually("the snoop's event is handled", WAIT, || {
        state(&mut conn, "snoop").contains_key("net") && settled(&mut conn, &["snoop"])
    });
    assert_eq!(
        len(&mut conn, "events:sub:snoop:dlq"),
        0,
        "snooping is not a failure"
    );
    let snoop = state(&mut conn, "snoop");
    assert!(snoop.contains_key("clock"), "the snoop ran to the end");
    for key in [
        "fs",
        "fs_dir",
        "fs_write",
        "env",
        "net",
        "net_listen",
        "udp",
        "dns",
    ] {
        assert!(
            snoop[key].starts_with("denied: "),
            "{key} must be denied (event {id}): {snoop:#?}"
        );
    }
    assert_eq!(snoop["env"], "denied: no environment variables visible");
    let net = snoop["net"].to_lowercase();
    assert!(
        !net.contains("refused") && !net.contains("timed out"),
        "the port listens, so only the sandbox can have said no: {net}"
    );
    for dir in [std::env::current_dir().unwrap(), world.dir.path().into()] {
        assert!(
            !dir.join("snoop-was-here.txt").exists(),
            "the snoop wrote into {}",
            dir.display()
        );
    }

    still_serves(&world, &["probe"]);
    assert_eq!(host.stop().code(), Some(0));
}

/// A plugin reads and writes only its own state: subscriber `b` cannot see
/// a key `a` committed through an event nor one an operator set in `a`'s
/// hash, not even by naming `a`'s Redis key; what `b` writes lands in
/// `events:state:b` only. (`b` reading its own key proves the peek works.)
#[test]
fn a_plugin_reads_and_writes_only_its_own_state() {
    let world = World::new(
        &["probe.wasm"],
        r#"
[subscribers.a]
plugin = "probe.wasm"
events = ["ForA"]

[subscribers.b]
plugin = "probe.wasm"
events = ["ForB"]
"#,
    );
    let mut conn = world.conn();
    let _: i64 = conn.hset("events:state:a", "secret", "s3cret").unwrap();
    let host = world.host();

    let a_event = publish(&mut conn, "ForA", json!({}));
    eventually("a handles its event", WAIT, || {
        state(&mut conn, "a").contains_key(&format!("seen:{a_event}"))
    });
    let peeks = [
        "secret",
        &format!("seen:{a_event}"),
        "events:state:a",
        "count",
    ]
    .map(|key| {
        (
            key.to_string(),
            publish(&mut conn, "ForB", json!({"act": "peek", "key": key})),
        )
    });
    eventually("b handles its peeks", WAIT, || {
        let b = state(&mut conn, "b");
        peeks
            .iter()
            .all(|(_, id)| b.contains_key(&format!("peeked:{id}")))
    });

    let b = state(&mut conn, "b");
    let peeked = |n: usize| b[&format!("peeked:{}", peeks[n].1)].as_str();
    assert_eq!(peeked(0), "<none>", "a's operator-set key");
    assert_eq!(peeked(1), "<none>", "a's committed key");
    assert_eq!(peeked(2), "<none>", "a's Redis key as a field name");
    assert_eq!(peeked(3), "4", "b's own count (its 4th event) is readable");

    // b's writes are in b's hash only; a's hash holds a's event and the
    // operator's key, nothing else.
    let a = state(&mut conn, "a");
    let a_keys: BTreeSet<String> = a.keys().cloned().collect();
    let expected: BTreeSet<String> = ["secret".to_string(), "count".to_string()]
        .into_iter()
        .chain(["seen", "build", "calls"].map(|k| format!("{k}:{a_event}")))
        .collect();
    assert_eq!(a_keys, expected, "a's hash: {a:#?}");
    assert_eq!(a["secret"], "s3cret");
    assert_eq!(a["count"], "1");
    for (_, id) in &peeks {
        assert!(b.contains_key(&format!("seen:{id}")));
    }
    let hashes: BTreeSet<String> = conn.keys("events:state:*").unwrap();
    assert_eq!(
        hashes,
        BTreeSet::from(["events:state:a".into(), "events:state:b".into()]),
        "no other state hash was written"
    );
    assert_eq!(len(&mut conn, "events:sub:b:dlq"), 0);
    assert_eq!(host.stop().code(), Some(0));
}

// ----- grants -----------------------------------------------------------

/// What a subscriber's `grants` table opens, and nothing more: the granted
/// variable is all of its environment (not the host's `SECRET`); the granted
/// folder can be read but not written, nor left through `..`; the rest of
/// the file system stays closed.
#[test]
fn grants_open_exactly_what_they_name() {
    let world = World::new(&["snoop.wasm"], "");
    std::fs::create_dir(world.dir.path().join("rates")).unwrap();
    std::fs::write(world.dir.path().join("rates/eur.txt"), "1.08").unwrap();
    std::fs::write(world.dir.path().join("secret.txt"), "s3cr3t").unwrap();
    world.configure(
        r#"
[subscribers.snoop]
plugin = "snoop.wasm"
events = ["Snoop"]
[subscribers.snoop.config]
read = "/rates/eur.txt"
escape = "/rates/../secret.txt"
write = "/rates/new.txt"
var = "REGION"
[subscribers.snoop.grants]
env = { REGION = "eu-west" }
dirs = { "/rates" = "rates" }
"#,
    );
    let host = world.host_with_env(&[("SECRET", "1")]);
    let mut conn = world.conn();

    publish(&mut conn, "Snoop", json!({}));
    eventually("the snoop's event is handled", WAIT, || {
        state(&mut conn, "snoop").contains_key("clock") && settled(&mut conn, &["snoop"])
    });
    let snoop = state(&mut conn, "snoop");
    assert_eq!(snoop["granted_read"], "allowed: 1.08", "{snoop:#?}");
    assert_eq!(snoop["granted_env"], "allowed: eu-west", "{snoop:#?}");
    assert_eq!(snoop["env"], "allowed: 1 variables", "{snoop:#?}");
    for key in ["granted_escape", "granted_write", "fs", "fs_dir"] {
        assert!(
            snoop[key].starts_with("denied: "),
            "{key} must be denied: {snoop:#?}"
        );
    }
    assert!(!world.dir.path().join("rates/new.txt").exists());
    assert_eq!(host.stop().code(), Some(0));
}

/// A folder grant of `/`, of the config's folder (`.`, or through a
/// symlink), of the plugins folder, the cache or `.eventhost`, or of any
/// folder holding one of them, is refused by `check` and `run` at its
/// config line. A symlink inside a legitimate grant that points out of it
/// is not followed (this held before).
#[test]
fn folder_grants_that_expose_the_config_plugins_cache_or_state_are_refused() {
    // This test waits up to 30 s where the others here wait 20 s.
    const WAIT: Duration = Duration::from_secs(30);
    let world = World::new(&["snoop.wasm"], "");
    let dir = world.dir.path();
    std::fs::create_dir(dir.join("rates")).unwrap();
    std::fs::create_dir(dir.join(".eventhost")).unwrap();
    std::os::unix::fs::symlink(dir, dir.join("rates/up")).unwrap();
    std::os::unix::fs::symlink(dir.join("plugins"), dir.join("looks-fine")).unwrap();
    let cache = cache_dir();
    let cache_parent = cache.parent().unwrap().display().to_string();
    let grant = |host: &str| {
        format!(
            "[subscribers.snoop]\nplugin = \"snoop.wasm\"\nevents = [\"Snoop\"]\n[subscribers.snoop.grants]\ndirs = {{ \"/x\" = \"{host}\" }}\n"
        )
    };
    for (host, says) in [
        ("/", "/ (the whole file system) holds the config's folder"),
        (".", "is the config's folder"),
        ("plugins", "is the plugins folder"),
        ("looks-fine", "is the plugins folder"),
        ("rates/up", "is the config's folder"),
        (".eventhost", "is the state folder"),
        (&cache_parent, "holds the compiled cache"),
        ("..", "holds the config's folder"),
    ] {
        world.configure(&grant(host));
        let (check, run) = world.refused();
        let line = world.line_of(&format!("dirs = {{ \"/x\" = \"{host}\" }}"));
        for text in [&check, &run] {
            assert!(
                text.contains(&format!("eventhost.toml:{line}:"))
                    && text.contains("subscribers.snoop.grants.dirs./x")
                    && text.contains(says),
                "{host}: {text}"
            );
        }
    }

    // A folder of its own is fine; a symlink in it that leads out is not
    // followed.
    std::fs::write(dir.join("secret.txt"), "s3cr3t").unwrap();
    std::os::unix::fs::symlink(dir.join("secret.txt"), dir.join("rates/leak")).unwrap();
    std::fs::remove_file(dir.join("rates/up")).unwrap();
    world.configure(
        "[subscribers.snoop]\nplugin = \"snoop.wasm\"\nevents = [\"Snoop\"]\n\
         [subscribers.snoop.config]\nescape = \"/rates/leak\"\n\
         [subscribers.snoop.grants]\ndirs = { \"/rates\" = \"rates\" }\n",
    );
    let host = world.host();
    let mut conn = world.conn();
    publish(&mut conn, "Snoop", json!({}));
    eventually("the snoop's event is handled", WAIT, || {
        state(&mut conn, "snoop").contains_key("clock") && settled(&mut conn, &["snoop"])
    });
    let snoop = state(&mut conn, "snoop");
    assert!(
        snoop["granted_escape"].starts_with("denied: "),
        "a symlink out of the grant is not followed: {snoop:#?}"
    );
    assert_eq!(host.stop().code(), Some(0));
}

// ----- imports ----------------------------------------------------------

/// A component that implements the subscriber world but also imports an
/// interface the host does not offer (`acme:ledger/api@1.0.0`) is refused
/// by `check` and by `run`, with a message naming the import.
#[test]
fn a_component_importing_what_the_host_lacks_is_refused_naming_the_import() {
    let world = World::new(&["probe.wasm"], "");
    world.install("extra_import.wasm", "ledger.wasm");
    world.configure(
        r#"
[subscribers.good]
plugin = "probe.wasm"

[subscribers.ledger]
plugin = "ledger.wasm"
"#,
    );
    let (text, err) = world.refused();
    assert!(text.contains("ok: subscribers.good: probe.wasm"), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("subscribers.ledger.plugin:"))
        .unwrap_or_else(|| panic!("no line about the ledger plugin: {text}"));
    assert!(
        line.starts_with(&world.config().display().to_string()),
        "{line}"
    );
    assert!(line.contains("ledger.wasm"), "names the file: {line}");
    assert!(
        line.contains("acme:ledger/api"),
        "names the missing import: {line}"
    );
    assert!(err.contains("1 plugin was refused"), "{err}");
    assert!(err.contains("acme:ledger/api"), "{err}");
    let keys: Vec<String> = world.conn().keys("*").unwrap();
    assert!(keys.is_empty(), "a refused run writes nothing: {keys:?}");
}

/// With hot reload on, the same component written over a running plugin
/// is refused, the log names the import, and the old build keeps serving.
#[test]
fn a_component_importing_what_the_host_lacks_is_refused_on_reload() {
    let world = World::watched("");
    let mut host = world.host();
    let mut conn = world.conn();
    let before = publish(&mut conn, "Ping", json!({}));
    eventually("the probe serves", WAIT, || {
        state(&mut conn, "probe").contains_key(&format!("seen:{before}"))
    });

    world.install("extra_import.wasm", "probe.wasm");
    host.wait_for_log("refused the new build");
    let log = host.log();
    let line = log
        .lines()
        .find(|l| l.contains("refused the new build"))
        .unwrap();
    assert!(line.contains("acme:ledger/api"), "{line}");
    assert!(
        line.contains("probe keep running the loaded build"),
        "{line}"
    );

    let after = publish(&mut conn, "Ping", json!({}));
    eventually("the loaded build still serves", WAIT, || {
        state(&mut conn, "probe").contains_key(&format!("seen:{after}"))
    });
    let probe = state(&mut conn, "probe");
    assert_eq!(probe[&format!("build:{after}")], "a");
    assert!(
        !probe.keys().any(|k| k.starts_with("balance:")),
        "the refused build never ran"
    );
    assert_eq!(len(&mut conn, "events:sub:probe:dlq"), 0);
    assert!(!host.log().contains("reloaded: build"));
    assert_eq!(host.stop().code(), Some(0));
}

// ----- the private Redis and the state folder ---------------------------

/// The inodes of the sockets process `pid` holds open.
fn socket_inodes(pid: &str) -> BTreeSet<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_string(),
            )
        })
        .collect()
}

/// Mode bits of `path`.
fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Without `[redis] url`, the private `redis-server` listens on a unix
/// socket in the 0700 state folder and on no TCP port (issue 20: a port
/// found free by binding port 0 can be taken by a local user before
/// redis-server binds it, who then reads the `AUTH` the host sends), and
/// requires a random password that is not on its command line nor in the
/// log; the URL file holds it and, like every file under `.eventhost`, is
/// 0600 (folders 0700). A connection without it is refused (NOAUTH);
/// `eventhost publish` finds and uses it. (Tests run as root, where modes
/// stop no one: the modes and the password are asserted, not a refused
/// read.)
#[test]
fn the_private_redis_requires_a_password_kept_private() {
    // This test waits up to 30 s where the others here wait 20 s.
    const WAIT: Duration = Duration::from_secs(30);
    let world = World::new(&["probe.wasm"], "");
    world.write_config(
        "[plugins]\ncache_dir = \".eventhost/cache\"\n\n[subscribers.probe]\nplugin = \"probe.wasm\"\n",
    );
    let host = world.host();
    let state_dir = world.dir.path().join(".eventhost");
    let url = std::fs::read_to_string(state_dir.join("redis/url")).unwrap();
    let url = url.trim();
    let socket = std::fs::canonicalize(state_dir.join("redis/redis.sock")).unwrap();
    let (base, password) = url
        .split_once("&pass=")
        .unwrap_or_else(|| panic!("no password in {url}"));
    assert_eq!(
        base,
        format!("unix://{}?db=0&user=default", socket.display()),
        "the URL names the socket in the state folder"
    );
    assert_eq!(password.len(), 64, "{url}");
    assert!(!host.log().contains(password), "the password is not logged");
    assert!(
        host.log().contains("pass=***"),
        "the log names the socket, not the password: {}",
        host.log()
    );

    let out = world.eventhost(&["publish", "Ping", r#"{"order": 7}"#]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
    eventually("the event is handled", WAIT, || {
        state(&mut conn, "probe").get("count").map(String::as_str) == Some("1")
    });

    let err = redis::Client::open(base)
        .unwrap()
        .get_connection()
        .and_then(|mut c| redis::cmd("GET").arg("x").query::<Option<String>>(&mut c))
        .expect_err("a connection without the password is refused");
    assert!(err.to_string().contains("NOAUTH"), "{err}");
    // What the orders example does with the URL file's socket and password.
    let cli = std::process::Command::new("redis-cli")
        .arg("-s")
        .arg(&socket)
        .args([
            "--no-auth-warning",
            "--user",
            "default",
            "--pass",
            password,
            "PING",
        ])
        .output()
        .expect("redis-cli comes with redis-server");
    assert_eq!(
        String::from_utf8_lossy(&cli.stdout).trim(),
        "PONG",
        "{cli:?}"
    );
    let wrong = format!("{base}&pass=guess");
    assert!(redis::Client::open(wrong.as_str())
        .unwrap()
        .get_connection()
        .is_err());

    let info: String = redis::cmd("INFO").arg("server").query(&mut conn).unwrap();
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {info}"))
            .trim()
            .to_string()
    };
    let pid = field("process_id:");
    assert_eq!(field("tcp_port:"), "0", "redis-server has no TCP port");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains(password),
        "the password is not on redis-server's command line"
    );
    // No socket redis-server holds is a TCP one: its sockets' inodes are
    // in none of the kernel's TCP tables, while the unix table has one.
    let held = socket_inodes(&pid);
    assert!(!held.is_empty(), "redis-server holds its sockets");
    let in_table = |table: &str| -> Vec<String> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        text.lines()
            .skip(1)
            .filter_map(|line| {
                let columns: Vec<&str> = line.split_whitespace().collect();
                let inode = if table == "unix" {
                    columns.get(6)
                } else {
                    columns.get(9)
                };
                inode.map(|i| i.to_string())
            })
            .filter(|inode| held.contains(inode))
            .collect()
    };
    assert_eq!(
        in_table("tcp"),
        Vec::<String>::new(),
        "no TCP (IPv4) socket"
    );
    assert_eq!(
        in_table("tcp6"),
        Vec::<String>::new(),
        "no TCP (IPv6) socket"
    );
    assert!(
        !in_table("unix").is_empty(),
        "its listener is a unix socket"
    );
    let socket_mode = std::fs::symlink_metadata(&socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(socket_mode, 0o700, "the socket is ours only");

    // Every folder 0700, every file 0600, the cache included (the socket,
    // checked above, is 0700: redis-server's unixsocketperm).
    let mut checked = 0;
    let mut stack = vec![state_dir.clone()];
    while let Some(dir) = stack.pop() {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path != socket {
                assert_eq!(mode(&path), 0o600, "{}", path.display());
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 4,
        "url, redis.conf, the log, the data, a cache entry"
    );
    assert!(state_dir.join("cache").is_dir());
    assert_eq!(mode(&state_dir.join("redis/url")), 0o600);
    assert_eq!(mode(&state_dir.join("redis/redis.conf")), 0o600);
    println!("private redis: peak RSS {} MiB", peak_mib(&host));
    assert_eq!(host.stop().code(), Some(0));
}

/// The URL file can outlive its server (a host killed with SIGKILL); the
/// socket it names must then not become a way to the password. `eventhost
/// publish` sends it only to a socket of ours in a folder only we may
/// write: a listener at the named path in a world-writable folder, or in
/// another user's folder, receives nothing, while the same listener in a
/// private folder of ours receives the password (so the listener would
/// have seen it).
#[test]
fn a_stale_url_file_never_sends_the_password_to_a_strangers_socket() {
    use std::io::Read as _;
    use std::os::unix::net::UnixListener;
    let world = World::new(&["probe.wasm"], "");
    world.write_config("[subscribers.probe]\nplugin = \"probe.wasm\"\n");
    let redis_dir = world.dir.path().join(".eventhost/redis");
    std::fs::create_dir_all(&redis_dir).unwrap();
    let password = "f".repeat(64);
    // Whatever connects to `dir/redis.sock` within 3 s: the bytes it sent.
    let publish_to = |dir: &Path| -> (std::process::Output, Vec<u8>) {
        let socket = dir.join("redis.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).unwrap();
        listener.set_nonblocking(true).unwrap();
        std::fs::write(
            redis_dir.join("url"),
            format!(
                "unix://{}?db=0&user=default&pass={password}",
                socket.display()
            ),
        )
        .unwrap();
        let heard = std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(3);
            let mut heard = Vec::new();
            while std::time::Instant::now() < deadline {
                if let Ok((mut stream, _)) = listener.accept() {
                    stream.set_nonblocking(false).unwrap();
                    stream
                        .set_read_timeout(Some(Duration::from_millis(500)))
                        .unwrap();
                    let mut buf = [0u8; 4096];
                    if let Ok(n) = stream.read(&mut buf) {
                        heard.extend_from_slice(&buf[..n]);
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            heard
        });
        let out = world.eventhost(&["publish", "Ping", "{}"]);
        (out, heard.join().unwrap())
    };

    let open = world.dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut strangers = vec![(open, "others may write it (mode 777)")];
    if unsafe { libc::geteuid() } == 0 {
        let theirs = world.dir.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).unwrap();
        strangers.push((theirs, "it belongs to user 65534"));
    }
    for (dir, why) in &strangers {
        let (out, heard) = publish_to(dir);
        assert!(
            heard.is_empty(),
            "{}: the stranger's socket heard {:?}",
            dir.display(),
            String::from_utf8_lossy(&heard)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("no `eventhost run` is running with it"),
            "{stderr}"
        );
        assert!(stderr.contains(why), "says why: {stderr}");
    }

    // The control: the same listener in a folder of ours hears it.
    let ours = world.dir.path().join("ours");
    std::fs::create_dir(&ours).unwrap();
    std::fs::set_permissions(&ours, std::fs::Permissions::from_mode(0o700)).unwrap();
    let (_, heard) = publish_to(&ours);
    assert!(
        String::from_utf8_lossy(&heard).contains(&password),
        "a socket of ours is sent the password: {:?}",
        String::from_utf8_lossy(&heard)
    );
}
