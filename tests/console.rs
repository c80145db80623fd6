//! The web console as the person on call uses it, in a real headless
//! Chromium driven through chromedriver: a plugin that traps fills its
//! DLQ; the overview shows it once the read token is typed in; the DLQ
//! page shows the reason; a replay with the read token is refused; a fixed
//! build is hot-reloaded, and the replay with the admin token sends the
//! entry back to be handled; a payload holding markup stays inert text.
//! Reads need a token, and the read token changes nothing; a list of big
//! dead letters reads a bounded page.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use support::*;

const TOKEN: &str = "console-test-token-0123456789";

/// The read token of the tests' hosts.
const READ: &str = "console-test-read-0123456789";

/// chromedriver on a port of its own, stopped when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Driver {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver must be installed: apt-get install -y chromium chromium-driver (.ci/setup does)");
        eventually("chromedriver answers", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Driver { child, port }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1400,900"],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("chromedriver starts chromium")
}

/// Waits until the text of the element at `css` satisfies `check`.
async fn text_until(
    client: &Client,
    css: &str,
    what: &str,
    check: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(element) = client.find(Locator::Css(css)).await {
            if let Ok(text) = element.text().await {
                if check(&text) {
                    return text;
                }
                if Instant::now() > deadline {
                    panic!("{css}: {what}; it reads {text:?}");
                }
            }
        }
        if Instant::now() > deadline {
            panic!("{css}: {what}; no such element");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_a_failing_plugin_and_replays_its_dead_letter_once_fixed() {
    let world = World::new(&[], "");
    world.install("panic.wasm", "svc.wasm");
    let addr = format!("127.0.0.1:{}", free_port());
    world.configure_watched(&format!(
        "[http]\nlisten = \"{addr}\"\nadmin_token = \"{TOKEN}\"\nread_token = \"{READ}\"\n\n\
         [subscribers.svc]\nplugin = \"svc.wasm\"\nevents = [\"Ping\"]\n"
    ));
    let mut host = world.host();
    let mut conn = world.conn();
    let hostile = json!({
        "note": "<script>window.__pwned = 1</script>",
        "html": "\"><img src=x onerror=\"window.__pwned = 2\">",
    });
    let id = publish(&mut conn, "Ping", hostile);
    eventually("the trap is dead-lettered", Duration::from_secs(10), || {
        len(&mut conn, "events:sub:svc:dlq") == 1
    });

    let driver = Driver::start();
    let client = browser(&driver).await;
    client.goto(&format!("http://{addr}/")).await.unwrap();
    let refused = text_until(&client, "#updated", "asks for the token", |t| {
        t.contains("token field")
    })
    .await;
    assert!(refused.contains("read token"), "{refused}");
    client
        .find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys(READ)
        .await
        .unwrap();
    let row = "#subscribers tr[data-name=\"svc\"]";
    text_until(
        &client,
        &format!("{row} td.dlq"),
        "shows one dead letter",
        |t| t == "1",
    )
    .await;
    text_until(
        &client,
        &format!("{row} td.build"),
        "shows the build",
        |t| t.len() == 12,
    )
    .await;
    let shot = client.screenshot().await.unwrap();
    std::fs::write(root().join("target/console-overview.png"), shot).unwrap();

    client
        .find(Locator::Css(&format!("{row} td.dlq a")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let reason = text_until(
        &client,
        "#letters tr.letter td.reason",
        "shows the reason",
        |t| t.contains("trap"),
    )
    .await;
    assert!(reason.contains("deliberate panic"), "{reason}");
    client
        .find(Locator::Css("#letters tr.letter td.id"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let payload = text_until(&client, "#payload", "shows the payload", |t| {
        t.contains("note")
    })
    .await;
    assert!(
        payload.contains("<script>window.__pwned = 1</script>"),
        "{payload}"
    );
    assert!(payload.contains("<img src=x onerror="), "{payload}");
    let shot = client.screenshot().await.unwrap();
    std::fs::write(root().join("target/console-dlq.png"), shot).unwrap();
    let inert = client
        .execute(
            "return [window.__pwned === undefined, \
             document.querySelectorAll('main script, main img').length];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(inert, json!([true, 0]), "the payload is text, not markup");

    // The read token: replay refused, nothing moves.
    client
        .find(Locator::Css("#letters input.pick"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    client
        .find(Locator::Css("#replay-selected"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let refused = text_until(&client, "#message", "says the replay is refused", |t| {
        t.contains("refused")
    })
    .await;
    assert!(refused.contains("admin token"), "{refused}");
    assert_eq!(len(&mut conn, "events:sub:svc:dlq"), 1);

    // The fix: a build that handles the event, hot-reloaded.
    world.install("probe.wasm", "svc.wasm");
    host.wait_for_log("reloaded: build");
    text_until(&client, "#reloads", "lists the reload", |t| {
        t.contains("plugin svc.wasm loaded")
    })
    .await;

    let field = client.find(Locator::Css("#token")).await.unwrap();
    field.clear().await.unwrap();
    // Tab leaves the field: the page reads again with the new token.
    field.send_keys(&format!("{TOKEN}\u{E004}")).await.unwrap();
    text_until(
        &client,
        "#letters tr.letter td.id",
        "lists the entry again",
        |t| !t.is_empty(),
    )
    .await;
    client
        .find(Locator::Css("#letters input.pick"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    client
        .find(Locator::Css("#replay-selected"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    text_until(&client, "#message", "says it replayed", |t| {
        t == "replayed 1"
    })
    .await;
    eventually(
        "the replayed event is handled",
        Duration::from_secs(10),
        || seen_all(&mut conn, "svc", std::slice::from_ref(&id)),
    );
    assert_eq!(len(&mut conn, "events:sub:svc:dlq"), 0);
    assert_eq!(
        state(&mut conn, "svc")[&format!("seen:{id}")],
        "1",
        "attempt 1 again"
    );
    client.goto(&format!("http://{addr}/")).await.unwrap();
    text_until(
        &client,
        &format!("{row} td.dlq"),
        "shows an empty DLQ",
        |t| t == "0",
    )
    .await;
    let inert: Value = client
        .execute("return window.__pwned === undefined;", vec![])
        .await
        .unwrap();
    assert_eq!(inert, json!(true));
    client.close().await.unwrap();
}

/// Order per key: a subscriber with parked keys is named in the red box
/// above the table with its oldest keys, their age and dead letter, and
/// its row shows the parked count (in red) and the age of the oldest held
/// event; a subscriber without `order_by` shows none. Keys come from
/// events: a key holding markup is shown as text. Its retries waiting in
/// Redis show with when the next is due.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_parked_keys_and_the_oldest_held_event() {
    let world = World::new(&["probe.wasm"], "");
    let addr = format!("127.0.0.1:{}", free_port());
    world.configure(&format!(
        "[http]\nlisten = \"{addr}\"\nread_token = \"{READ}\"\n\n\
         [subscribers.svc]\nplugin = \"probe.wasm\"\nevents = [\"Ping\"]\n\
         order_by = \"order_id\"\non_dead_letter = \"park\"\n\n\
         [subscribers.plain]\nplugin = \"probe.wasm\"\nevents = [\"Ping\"]\n"
    ));
    let mut conn = world.conn();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let hostile = "<img src=x onerror=\"window.__pwned = 3\">";
    let _: () = redis::pipe()
        .zadd("events:order:svc:parked", "o-1", now - 180_000)
        .zadd("events:order:svc:parked", hostile, now - 10_000)
        .rpush("events:order:svc:q:o-1", "park:1-0")
        .zadd("events:order:svc:held", "o-7", now - 30_000)
        // Two retries waiting in Redis, the next due in 3 hours.
        .zadd("events:sub:svc:schedule", "r-1", now + 3 * 3_600_000)
        .zadd("events:sub:svc:schedule", "r-2", now + 5 * 3_600_000)
        .query(&mut conn)
        .unwrap();
    let _host = world.host();

    let driver = Driver::start();
    let client = browser(&driver).await;
    client.goto(&format!("http://{addr}/")).await.unwrap();
    client
        .find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys(READ)
        .await
        .unwrap();
    let row = "#subscribers tr[data-name=\"svc\"]";
    text_until(
        &client,
        &format!("{row} td.parked"),
        "shows 2 parked",
        |t| t == "2",
    )
    .await;
    let held = text_until(&client, &format!("{row} td.held"), "shows the held", |t| {
        t.ends_with(" s (1 key)")
    })
    .await;
    let seconds: u64 = held.split(' ').next().unwrap().parse().unwrap();
    assert!((30..90).contains(&seconds), "{held}");
    let plain = "#subscribers tr[data-name=\"plain\"]";
    text_until(&client, &format!("{plain} td.parked"), "no order", |t| {
        t == "–"
    })
    .await;
    text_until(
        &client,
        &format!("{row} td.scheduled"),
        "shows the retries waiting",
        |t| t == "2 (next in 3 h)",
    )
    .await;
    text_until(
        &client,
        &format!("{plain} td.scheduled"),
        "none waits",
        |t| t == "0",
    )
    .await;
    let alert = text_until(&client, "#parked", "names the parked keys", |t| {
        t.starts_with("svc: 2 keys parked")
    })
    .await;
    assert!(alert.contains("o-1 (3 min, dead letter 1-0)"), "{alert}");
    assert!(alert.contains(hostile), "the key is shown as text: {alert}");
    let red: Value = client
        .execute(
            &format!(
                "return [getComputedStyle(document.querySelector('{row} td.parked')).color, \
                 document.querySelector('#parked').hidden, window.__pwned === undefined, \
                 document.querySelectorAll('main img').length];"
            ),
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(red, json!(["rgb(255, 255, 255)", false, true, 0]), "{red}");
    let shot = client.screenshot().await.unwrap();
    std::fs::write(root().join("target/console-parked.png"), shot).unwrap();

    // Released: the box goes away.
    let _: () = redis::cmd("DEL")
        .arg("events:order:svc:parked")
        .query(&mut conn)
        .unwrap();
    text_until(
        &client,
        &format!("{row} td.parked"),
        "shows 0 parked",
        |t| t == "0",
    )
    .await;
    let hidden: Value = client
        .execute("return document.querySelector('#parked').hidden;", vec![])
        .await
        .unwrap();
    assert_eq!(hidden, json!(true));
    client.close().await.unwrap();
}

/// A world of the probe on `Ping` whose host serves the console on a free
/// port with the admin token [`TOKEN`]; the console's address.
fn console_world() -> (World, String) {
    let world = World::new(&["probe.wasm"], "");
    let addr = format!("127.0.0.1:{}", free_port());
    world.configure(&format!(
        "[http]\nlisten = \"{addr}\"\nadmin_token = \"{TOKEN}\"\n\n{PROBE}events = [\"Ping\"]\n"
    ));
    (world, addr)
}

#[test]
fn changes_from_another_origin_or_without_the_token_are_refused() {
    let (mut world, addr) = console_world();
    let _host = world.host();
    let mut conn = world.conn();
    publish(&mut conn, "Ping", json!({"act": "reject"}));
    eventually("a dead letter", Duration::from_secs(10), || {
        len(&mut conn, "events:sub:probe:dlq") == 1
    });
    let post = |headers: &str| post_to(&addr, "/api/dlq/probe/purge", headers, r#"{"all":true}"#);
    let json = "Content-Type: application/json\r\n";
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    assert_eq!(post(json).0, 401, "no token");
    assert_eq!(
        post(&format!("{json}Authorization: Bearer wrong\r\n")).0,
        401
    );
    assert_eq!(post(&auth).0, 415, "a form post, not JSON");
    let (code, reply) = post(&format!("{json}{auth}Origin: http://evil.example\r\n"));
    assert_eq!(code, 403, "{reply}");
    assert_eq!(
        post(&format!("{json}{auth}Sec-Fetch-Site: cross-site\r\n")).0,
        403
    );
    assert_eq!(len(&mut conn, "events:sub:probe:dlq"), 1, "nothing purged");
    let (code, reply) = post(&format!("{json}{auth}Origin: http://{addr}\r\n"));
    assert_eq!(code, 200, "{reply}");
    assert!(reply.ends_with(r#"{"purged":1}"#), "{reply}");
    assert_eq!(len(&mut conn, "events:sub:probe:dlq"), 0);

    // The page itself runs only its own script.
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    write!(stream, "GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut page = String::new();
    stream.read_to_string(&mut page).unwrap();
    assert!(
        page.to_lowercase()
            .contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{page}"
    );

    // What bus::dlq refuses, each with its status: a choice that is not
    // one is 400, a replay nobody would read is 409, Redis gone is 503
    // (to try again), not 409.
    let authorized = |path: &str, body: &str| post_to(&addr, path, &format!("{json}{auth}"), body);
    let (code, reply) = authorized("/api/dlq/probe/replay", r#"{"ids":["1-0"],"all":true}"#);
    assert_eq!(code, 400, "{reply}");
    assert!(reply.contains("not both"), "{reply}");
    let (code, reply) = authorized("/api/dlq/ghost/replay", r#"{"all":true}"#);
    assert_eq!(code, 409, "{reply}");
    assert!(reply.contains("no consumer group"), "{reply}");
    world.redis.kill();
    let (code, reply) = authorized("/api/dlq/probe/replay", r#"{"all":true}"#);
    assert_eq!(code, 503, "{reply}");
    assert!(reply.contains("once Redis answers"), "{reply}");
    let (code, reply) = authorized("/api/dlq/probe/purge", r#"{"all":true}"#);
    assert_eq!(code, 503, "{reply}");
}

/// Reads of operator data (the overview, the DLQ list, an entry) need the
/// read token (here from `EVENTHOST_READ_TOKEN`) or the admin token, from
/// this site only: without one 401 at once, with a wrong one 401 after a
/// second, from another origin 403. The read token replays and purges
/// nothing. `/healthz` and `/metrics` stay open. A host with neither token
/// refuses reads, saying what to set.
#[test]
fn reads_need_a_token_and_the_read_token_changes_nothing() {
    let (world, addr) = console_world();
    let mut host = Host::serving(&world.config(), &[("EVENTHOST_READ_TOKEN", READ)]);
    host.wait_for_log("HTTP on");
    let mut conn = world.conn();
    publish(&mut conn, "Ping", json!({"act": "reject"}));
    eventually("a dead letter", Duration::from_secs(10), || {
        len(&mut conn, "events:sub:probe:dlq") == 1
    });
    let id = entries(&mut conn, "events:sub:probe:dlq").remove(0).0;
    let read = format!("Authorization: Bearer {READ}\r\n");
    let admin = format!("Authorization: Bearer {TOKEN}\r\n");
    let reads = [
        "/api/status".to_string(),
        "/api/dlq/probe".to_string(),
        format!("/api/dlq/probe/entry/{id}"),
    ];
    for path in &reads {
        let started = Instant::now();
        let (code, reply) = get_from(&addr, path, "");
        assert_eq!(code, 401, "{path} without a token: {reply}");
        assert!(reply.contains("read token"), "{reply}");
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "no token is no guess"
        );
        let started = Instant::now();
        let (code, _) = get_from(
            &addr,
            path,
            "Authorization: Bearer wrong-but-long-enough\r\n",
        );
        assert_eq!(code, 401, "{path} with a wrong token");
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "a wrong token is paced"
        );
        let (code, reply) = get_from(&addr, path, &read);
        assert_eq!(code, 200, "{path} with the read token: {reply}");
        let (code, reply) = get_from(&addr, path, &admin);
        assert_eq!(code, 200, "{path} with the admin token: {reply}");
        let (code, reply) = get_from(
            &addr,
            path,
            &format!("{read}Origin: http://evil.example\r\n"),
        );
        assert_eq!(code, 403, "{path} from another site: {reply}");
    }
    let (_, reply) = get_from(&addr, &format!("/api/dlq/probe/entry/{id}"), &read);
    assert_eq!(body_of(&reply)["data"]["act"], "reject");
    let json = "Content-Type: application/json\r\n";
    for verb in ["replay", "purge"] {
        let (code, reply) = post_to(
            &addr,
            &format!("/api/dlq/probe/{verb}"),
            &format!("{json}{read}"),
            r#"{"all":true}"#,
        );
        assert_eq!(code, 401, "{verb} with the read token: {reply}");
        assert!(reply.contains("admin token"), "{reply}");
    }
    assert_eq!(len(&mut conn, "events:sub:probe:dlq"), 1, "nothing moved");
    for open in ["/healthz", "/metrics"] {
        assert_eq!(get_from(&addr, open, "").0, 200, "{open} needs no token");
    }
    drop(host);

    // Neither token: reads are off, and the answer says what to set.
    let bare = World::new(&["probe.wasm"], "");
    let addr = format!("127.0.0.1:{}", free_port());
    bare.configure(&format!(
        "[http]\nlisten = \"{addr}\"\n\n{PROBE}events = [\"Ping\"]\n"
    ));
    let mut host = bare.host();
    host.wait_for_log("HTTP on");
    let (code, reply) = get_from(&addr, "/api/status", &read);
    assert_eq!(code, 403, "{reply}");
    assert!(
        reply.contains("read_token") && reply.contains("EVENTHOST_READ_TOKEN"),
        "{reply}"
    );
}

/// POSTs `body` to `path` on the console at `addr` with `headers`; the
/// status and the whole reply.
fn post_to(addr: &str, path: &str, headers: &str, body: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let code = reply.split(' ').nth(1).unwrap().parse().unwrap();
    (code, reply)
}

/// GETs `path` from the console at `addr` with `headers`; the status and
/// the whole reply.
fn get_from(addr: &str, path: &str, headers: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{headers}\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let code = reply.split(' ').nth(1).unwrap().parse().unwrap();
    (code, reply)
}

/// The JSON body of a reply.
fn body_of(reply: &str) -> Value {
    let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|err| panic!("{err}: {reply:.500}"))
}

/// A dead letter of about `bytes` bytes whose payload is a long array of
/// small numbers: the shape that costs most once parsed whole (each `0,`
/// becomes a JSON value of tens of bytes).
fn big_letter(i: usize, bytes: usize) -> String {
    let numbers = vec!["0"; bytes / 2].join(",");
    format!(
        r#"{{"event_type":"Big","event_id":"big-{i}","n":[{numbers}],"_failures":[{{"timestamp":1.0,"reason":"probe: rejected: too big","kind":"reject","subscriber":"probe","attempt":1}}],"_metadata":{{"id":"big-{i}","timestamp":1.0,"ttl":null}}}}"#
    )
}

/// Listing a DLQ of 20 dead letters of 1 MiB reads a bounded page: the
/// answer holds summaries and cut previews (not the payloads), the host's
/// peak RSS grows by less than 100 MiB, and the full payload is one
/// entry's request away.
#[test]
fn listing_big_dead_letters_reads_a_bounded_page() {
    use support::attack::status_kib;
    let (world, addr) = console_world();
    let mut host = world.host();
    host.wait_for_log("eventhost running");
    let mut conn = world.conn();
    let letter_bytes = 1 << 20;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(xadd(
            &mut conn,
            "events:sub:probe:dlq",
            &big_letter(i, letter_bytes),
        ));
    }
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    // The host at rest: its peak so far.
    std::thread::sleep(Duration::from_millis(500));
    let before = status_kib(host.pid(), "VmHWM");
    let started = Instant::now();
    let (code, reply) = get_from(&addr, "/api/dlq/probe", &auth);
    let took = started.elapsed();
    let peak = status_kib(host.pid(), "VmHWM");
    let held = status_kib(host.pid(), "VmRSS");
    eprintln!(
        "listed 20 dead letters of {letter_bytes} bytes in {took:.2?}: answer {} bytes, \
         peak RSS {} -> {} MiB (+{} MiB), RSS after {} MiB",
        reply.len(),
        before >> 10,
        peak >> 10,
        (peak - before) >> 10,
        held >> 10
    );
    assert_eq!(code, 200, "{reply:.500}");
    let list = body_of(&reply);
    let entries = list["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 20, "{list:.500}");
    let first = &entries[0];
    assert_eq!(first["id"], ids[0].as_str());
    assert_eq!(first["event_type"], "Big");
    assert_eq!(first["event_id"], "big-0");
    assert_eq!(first["kind"], "reject");
    assert_eq!(first["reason"], "probe: rejected: too big");
    assert_eq!(first["attempt"], 1);
    assert_eq!(first["failures"], 1);
    assert_eq!(first["bytes"], big_letter(0, letter_bytes).len());
    let preview = first["preview"].as_str().unwrap();
    assert!(preview.len() <= 1024, "{} bytes", preview.len());
    assert!(big_letter(0, letter_bytes).starts_with(preview));
    assert_eq!(first["preview_cut"], true);
    assert!(first.get("data").is_none(), "no payload in the list");
    assert!(
        reply.len() < 64 * 1024,
        "the answer is {} bytes",
        reply.len()
    );
    assert!(
        peak - before < 100 << 10,
        "peak RSS grew by {} MiB",
        (peak - before) >> 10
    );
    // 40 more: past the page's byte budget, the page ends early and says
    // where the next starts; following it lists each entry once.
    for i in 20..60 {
        ids.push(xadd(
            &mut conn,
            "events:sub:probe:dlq",
            &big_letter(i, letter_bytes),
        ));
    }
    let mut listed = Vec::new();
    let mut path = "/api/dlq/probe?limit=1000".to_string();
    let mut pages = 0;
    loop {
        let (code, reply) = get_from(&addr, &path, &auth);
        assert_eq!(code, 200, "{reply:.500}");
        let list = body_of(&reply);
        pages += 1;
        assert!(reply.len() < 256 * 1024, "a page of {} bytes", reply.len());
        for entry in list["entries"].as_array().unwrap() {
            listed.push(entry["id"].as_str().unwrap().to_string());
        }
        match list["next"].as_str() {
            Some(next) => path = format!("/api/dlq/probe?limit=1000&after={next}"),
            None => break,
        }
    }
    assert_eq!(listed, ids, "every entry once, in order");
    assert!(pages >= 2, "60 letters of 1 MiB took {pages} page");
    eprintln!("60 dead letters of 1 MiB listed in {pages} pages");
    // The full payload, one entry at a time, copied as its text (built
    // into JSON values it took over 100 MiB).
    let before = status_kib(host.pid(), "VmHWM");
    let (code, reply) = get_from(&addr, &format!("/api/dlq/probe/entry/{}", ids[3]), &auth);
    let peak = status_kib(host.pid(), "VmHWM");
    eprintln!(
        "one entry of 1 MiB shown whole: answer {} bytes, peak RSS {} -> {} MiB",
        reply.len(),
        before >> 10,
        peak >> 10
    );
    assert!(
        peak - before < 32 << 10,
        "peak RSS grew by {} MiB",
        (peak - before) >> 10
    );
    assert_eq!(code, 200, "{reply:.500}");
    let entry = body_of(&reply);
    assert_eq!(entry["event_id"], "big-3");
    assert_eq!(
        entry["data"]["n"].as_array().unwrap().len(),
        letter_bytes / 2
    );
    // Purging all 60 by kind selects them from their summaries too, not by
    // parsing pages of whole payloads.
    let before = status_kib(host.pid(), "VmHWM");
    let started = Instant::now();
    let (code, reply) = post_to(
        &addr,
        "/api/dlq/probe/purge",
        &format!("Content-Type: application/json\r\n{auth}"),
        r#"{"all":true,"kind":"reject"}"#,
    );
    let took = started.elapsed();
    let peak = status_kib(host.pid(), "VmHWM");
    eprintln!(
        "purged 60 dead letters of 1 MiB by kind in {took:.2?}: peak RSS {} -> {} MiB",
        before >> 10,
        peak >> 10
    );
    assert_eq!(code, 200, "{reply:.500}");
    assert_eq!(body_of(&reply)["purged"], 60);
    assert_eq!(len(&mut conn, "events:sub:probe:dlq"), 0);
    assert!(
        peak - before < 100 << 10,
        "peak RSS grew by {} MiB",
        (peak - before) >> 10
    );
}

/// A replay or purge by filter is exact even where a summary cannot say:
/// a big letter whose failures are in neither end read (between two
/// fields of 100 KB) is read whole, alone, to decide.
#[test]
fn a_purge_by_kind_reads_a_letter_whole_when_its_ends_do_not_say() {
    let (world, addr) = console_world();
    let mut host = world.host();
    host.wait_for_log("eventhost running");
    let mut conn = world.conn();
    let pad = "x".repeat(100_000);
    let letter = |kind: &str| {
        format!(
            r#"{{"event_type":"Big","pad":"{pad}","_failures":[{{"reason":"r","kind":"{kind}"}}],"more":"{pad}"}}"#
        )
    };
    xadd(&mut conn, "events:sub:probe:dlq", &letter("trap"));
    let kept = xadd(&mut conn, "events:sub:probe:dlq", &letter("reject"));
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    let (_, reply) = get_from(&addr, "/api/dlq/probe", &auth);
    let list = body_of(&reply);
    assert_eq!(
        list["entries"][0]["failures"],
        Value::Null,
        "the ends do not say"
    );
    let (code, reply) = post_to(
        &addr,
        "/api/dlq/probe/purge",
        &format!("Content-Type: application/json\r\n{auth}"),
        r#"{"all":true,"kind":"trap"}"#,
    );
    assert_eq!(code, 200, "{reply:.500}");
    assert_eq!(body_of(&reply)["purged"], 1);
    let left = entries(&mut conn, "events:sub:probe:dlq");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].0, kept);
}
