//! Outbound HTTP from plugins, against a real HTTP server on loopback: a
//! request a grant names is sent and its answer reaches the plugin; every
//! other is denied with `HttpRequestDenied` before any byte leaves, and
//! counted; a name that resolves to an internal address is denied unless
//! a grant names the address itself; a response over its limit fails in
//! the plugin.

mod support;

use std::io::{BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use support::http_server::{fetched, read_request};
use support::*;

const WAIT: Duration = Duration::from_secs(20);

/// A W3C trace context an event carries.
const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A small HTTP/1.1 server on loopback: it answers `/big` with 9 MiB and
/// any other path with `hello <path>`, and keeps each request's first line,
/// `Host`, `traceparent` (if any) and `Idempotency-Key` headers.
struct Server {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let Some(request) = read_request(&mut reader) else {
                    continue;
                };
                let header = |name| request.header(name).unwrap_or_default();
                let trace = request
                    .header("traceparent")
                    .map_or(String::new(), |t| format!(" trace={t}"));
                record.lock().unwrap().push(format!(
                    "{} host={}{trace} key={}",
                    request.line,
                    header("host"),
                    header("idempotency-key")
                ));
                let (path, body) = (request.path(), &request.body);
                let answer = if path == "/big" {
                    vec![b'x'; 9 << 20]
                } else {
                    format!("hello {path} {}", String::from_utf8_lossy(body)).into_bytes()
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    answer.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&answer);
            }
        });
        Server { port, seen }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

#[test]
fn a_granted_request_is_sent_and_every_other_is_denied_and_counted() {
    let server = Server::start();
    let other = Server::start();
    let port = server.port;
    let metrics = format!("127.0.0.1:{}", free_port());
    let world = World::new(&["fetch.wasm"], "");
    world.write_config(&format!(
        "[http]\nlisten = \"{metrics}\"\n\n{}\
         [subscribers.fetcher]\nplugin = \"fetch.wasm\"\nevents = [\"Fetch\"]\n\
         [subscribers.fetcher.grants]\nhttp = [\"http://127.0.0.1:{port}\"]\n\n\
         [subscribers.byname]\nplugin = \"fetch.wasm\"\nevents = [\"FetchByName\"]\n\
         [subscribers.byname.grants]\nhttp = [\"http://localhost:{port}\"]\n\n\
         [subscribers.nogrant]\nplugin = \"fetch.wasm\"\nevents = [\"FetchNoGrant\"]\n",
        world.header()
    ));
    let mut host = world.host();
    host.wait_for_log("eventhost running");
    let mut conn = world.conn();

    let url = format!("http://127.0.0.1:{port}/charge");
    let id = publish(
        &mut conn,
        "Fetch",
        json!({"url": format!("{url}?amount=100")}),
    );
    let (status, body) = fetched(&mut conn, "fetcher", &id).expect("a granted request is sent");
    assert_eq!(status, "200");
    assert_eq!(body, "hello /charge?amount=100 ");
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    let expected = format!("GET /charge?amount=100 HTTP/1.1 host=127.0.0.1:{port} key=");
    assert!(seen[0].starts_with(&expected), "{seen:?}");

    // Another port of the same address, no grant at all, and a name that
    // resolves to loopback though the grant names the name, not the address.
    let denied = [
        (
            "fetcher",
            publish(
                &mut conn,
                "Fetch",
                json!({"url": format!("http://127.0.0.1:{}/", other.port)}),
            ),
        ),
        (
            "nogrant",
            publish(&mut conn, "FetchNoGrant", json!({"url": url})),
        ),
        (
            "byname",
            publish(
                &mut conn,
                "FetchByName",
                json!({"url": format!("http://localhost:{port}/")}),
            ),
        ),
    ];
    for (subscriber, id) in &denied {
        let error = fetched(&mut conn, subscriber, id).expect_err("denied");
        assert!(error.contains("HttpRequestDenied"), "{subscriber}: {error}");
    }
    assert_eq!(
        server.seen().len(),
        1,
        "no denied request reached the server"
    );
    assert!(other.seen().is_empty());

    // A response over its limit (8 MiB) fails in the plugin as it reads
    // the body (a failed read of the body's stream), not in the host.
    let big = publish(
        &mut conn,
        "Fetch",
        json!({"url": format!("http://127.0.0.1:{port}/big")}),
    );
    let error = fetched(&mut conn, "fetcher", &big).expect_err("over the limit");
    assert!(error.contains("read failed"), "{error}");

    let text = scrape(&metrics);
    let count = |subscriber: &str, outcome: &str| {
        counter(
            &text,
            &format!("eventhost_http_requests_total{{subscriber=\"{subscriber}\",outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(count("fetcher", "sent"), 2, "{text}");
    assert_eq!(count("fetcher", "denied"), 1, "{text}");
    assert_eq!(count("nogrant", "denied"), 1, "{text}");
    assert_eq!(count("byname", "denied"), 1, "{text}");
    let log = host.log();
    assert!(
        log.contains("localhost resolves to internal addresses only"),
        "the log says why: {log}"
    );
    assert_eq!(len(&mut conn, "events:sub:fetcher:dlq"), 0);
    host.stop();
}

/// `openssl` run in `dir` with `args`; panics with its output if it fails.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl (install it: apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA of its own and a certificate it signed for 127.0.0.1, in `dir`
/// (`ca.pem`, `server.pem`, `server.key`).
fn private_ca(dir: &std::path::Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=eventhost test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName = IP:127.0.0.1\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ],
    );
}

/// HTTPS to a private endpoint: trusted through the CA file its grants
/// name, and refused (the certificate is not trusted) by a subscriber
/// whose grants name the same endpoint but not the CA.
#[test]
fn https_to_a_private_endpoint_trusts_the_ca_its_grants_name() {
    let world = World::new(&["fetch.wasm"], "");
    let certs = world.dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    private_ca(&certs);
    let port = free_port();
    let mut server = std::process::Command::new("openssl")
        .current_dir(&certs)
        .args([
            "s_server",
            "-quiet",
            "-accept",
            &port.to_string(),
            "-cert",
            "server.pem",
            "-key",
            "server.key",
            "-www",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl s_server");
    eventually("the TLS server listens", WAIT, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    world.write_config(&format!(
        "{}[subscribers.trusting]\nplugin = \"fetch.wasm\"\nevents = [\"Fetch\"]\n\
         [subscribers.trusting.grants]\nhttp = [\"https://127.0.0.1:{port}\"]\nhttp_ca = \"certs/ca.pem\"\n\n\
         [subscribers.public]\nplugin = \"fetch.wasm\"\nevents = [\"FetchPublic\"]\n\
         [subscribers.public.grants]\nhttp = [\"https://127.0.0.1:{port}\"]\n",
        world.header()
    ));
    let mut host = world.host();
    host.wait_for_log("eventhost running");
    let mut conn = world.conn();
    let url = format!("https://127.0.0.1:{port}/");
    let id = publish(&mut conn, "Fetch", json!({"url": url}));
    let (status, body) = fetched(&mut conn, "trusting", &id).expect("trusted through its CA file");
    assert_eq!(status, "200");
    assert!(body.contains("s_server"), "{body}");
    let id = publish(&mut conn, "FetchPublic", json!({"url": url}));
    let error = fetched(&mut conn, "public", &id).expect_err("not trusted");
    assert!(error.contains("TlsCertificateError"), "{error}");
    host.stop();
    let _ = server.kill();
    let _ = server.wait();
}

/// Every request carries an `Idempotency-Key` derived from the subscriber,
/// the event and the request's index in the call: two requests of one
/// call differ, a retry of the event sends the same keys again, and
/// another event's differ.
#[test]
fn each_request_carries_an_idempotency_key_the_same_on_every_attempt_and_the_events_trace() {
    let server = Server::start();
    let port = server.port;
    let world = World::new(&["fetch.wasm"], "");
    world.write_config(&format!(
        "{}[subscribers.fetcher]\nplugin = \"fetch.wasm\"\nevents = [\"Fetch\"]\nretry_backoff_ms = 50\n\
         [subscribers.fetcher.grants]\nhttp = [\"http://127.0.0.1:{port}\"]\n",
        world.header()
    ));
    let mut host = world.host();
    host.wait_for_log("eventhost running");
    let mut conn = world.conn();
    let url = format!("http://127.0.0.1:{port}/notify");
    let retried = publish(
        &mut conn,
        "Fetch",
        json!({"url": url, "times": 2, "retry_first": true, "traceparent": TRACE}),
    );
    eventually("the retried event is committed", WAIT, || {
        state(&mut conn, "fetcher").contains_key(&format!("status:{retried}"))
            && pending(&mut conn, "events:sub:fetcher", "sub:fetcher-group") == 0
    });
    let other = publish(&mut conn, "Fetch", json!({"url": url}));
    fetched(&mut conn, "fetcher", &other).expect("sent");
    let keys: Vec<String> = server
        .seen()
        .iter()
        .map(|line| line.rsplit_once("key=").unwrap().1.to_string())
        .collect();
    assert_eq!(
        keys.len(),
        5,
        "two requests on each of two attempts, then one: {keys:?}"
    );
    assert!(keys.iter().all(|k| k.len() == 36), "{keys:?}");
    assert_ne!(keys[0], keys[1], "two requests of one call");
    assert_eq!(keys[0..2], keys[2..4], "the retry sends the same keys");
    assert!(!keys[..4].contains(&keys[4]), "another event's key differs");
    let traced = |line: &String| line.contains(&format!(" trace={TRACE} "));
    let seen = server.seen();
    assert!(seen[..4].iter().all(traced), "{seen:?}");
    assert!(
        !seen[4].contains("trace="),
        "an event without one: {seen:?}"
    );
    host.stop();
}

/// Grants reload live: a request denied under the running config is sent
/// once the config grants its destination, with no restart.
#[test]
fn grants_reload_live() {
    let server = Server::start();
    let port = server.port;
    let world = World::new(&["fetch.wasm"], "");
    let table = "[subscribers.fetcher]\nplugin = \"fetch.wasm\"\nevents = [\"Fetch\"]\n";
    world.configure_watched(table);
    let mut host = world.host();
    host.wait_for_log("eventhost running");
    let mut conn = world.conn();
    let url = format!("http://127.0.0.1:{port}/");
    let before = publish(&mut conn, "Fetch", json!({"url": url}));
    let error = fetched(&mut conn, "fetcher", &before).expect_err("not granted yet");
    assert!(error.contains("HttpRequestDenied"), "{error}");

    world.configure_watched(&format!(
        "{table}[subscribers.fetcher.grants]\nhttp = [\"http://127.0.0.1:{port}\"]\n"
    ));
    host.wait_for_log("settings changed");
    let after = publish(&mut conn, "Fetch", json!({"url": url}));
    let (status, _) = fetched(&mut conn, "fetcher", &after).expect("granted now");
    assert_eq!(status, "200");
    assert_eq!(server.seen().len(), 1);
    host.stop();
}
