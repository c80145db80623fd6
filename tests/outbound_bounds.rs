//! Outbound HTTP under a hostile or broken far end, against real servers on
//! loopback: a redirect out of the grants is neither followed by the host
//! nor reachable by a client that follows it; a server that never answers
//! costs a call no more than its time limit; a 1 GiB response is cut at
//! its bound with the host's memory flat; a plugin sending requests without
//! end leaves a bystander at least half its pace.

mod support;

use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use support::attack::{peak_mib, Attack, Pace, BYSTANDER};
use support::http_server::{fetched, read_request};
use support::*;

const WAIT: Duration = Duration::from_secs(30);

/// A server on loopback that reads each request's head, then lets `answer`
/// write to the connection (one thread per connection); counts connections
/// and the bytes `answer` says it wrote.
struct Loopback {
    port: u16,
    connections: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
}

impl Loopback {
    fn start(answer: impl Fn(&mut TcpStream, &AtomicU64) + Send + Sync + 'static) -> Loopback {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (connections, written) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (count, sent) = (connections.clone(), written.clone());
        let answer = Arc::new(answer);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let (answer, sent) = (answer.clone(), sent.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    if read_request(&mut reader).is_some() {
                        answer(&mut stream, &sent);
                    }
                });
            }
        });
        Loopback {
            port,
            connections,
            written,
        }
    }

    /// Answers every request with a short 200.
    fn ok() -> Loopback {
        Loopback::start(|stream, _| {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        })
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}

/// The fetch plugin as `fetcher` on `Fetch`, granted `grants`, with
/// `settings` added to its table; `extra` more subscribers.
fn fetcher_tables(grants: &[&Loopback], settings: &str, extra: &str) -> String {
    let grants: Vec<String> = grants
        .iter()
        .map(|s| format!("\"http://127.0.0.1:{}\"", s.port))
        .collect();
    format!(
        "[subscribers.fetcher]\nplugin = \"fetch.wasm\"\nevents = [\"Fetch\"]\n{settings}\n\
         [subscribers.fetcher.grants]\nhttp = [{}]\n\n{extra}",
        grants.join(", ")
    )
}

const PLUGINS: [&str; 2] = ["fetch.wasm", "probe.wasm"];

/// A world with [`fetcher_tables`] as its subscribers.
fn fetcher(grants: &[&Loopback], settings: &str, extra: &str) -> World {
    World::new(&PLUGINS, &fetcher_tables(grants, settings, extra))
}

/// Like [`fetcher`], with calls allowed `timeout_ms` (the tests' usual
/// claim window allows 1 s).
fn slow_fetcher(grants: &[&Loopback], timeout_ms: u64) -> World {
    let world = World::new(&PLUGINS, "");
    let header = world.header();
    assert!(header.contains("claim_idle_ms = 2000\n"), "{header}");
    let header = header.replace(
        "claim_idle_ms = 2000\n",
        &format!("claim_idle_ms = {}\n", 2 * timeout_ms),
    );
    let tables = fetcher_tables(grants, &format!("timeout_ms = {timeout_ms}"), "");
    world.write_config(&format!("{header}{tables}"));
    world
}

#[test]
fn a_redirect_out_of_the_grants_is_not_followed_and_a_client_following_it_is_denied() {
    let elsewhere = Loopback::ok();
    let target = elsewhere.url();
    let granted = Loopback::start(move |stream, _| {
        let head = format!(
            "HTTP/1.1 302 Found\r\nLocation: {target}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let _ = stream.write_all(head.as_bytes());
    });
    let world = fetcher(&[&granted], "", "");
    let mut host = world.host();
    host.wait_for_log("eventhost running");
    let mut conn = world.conn();

    let id = publish(&mut conn, "Fetch", json!({"url": granted.url()}));
    let (status, location) =
        fetched(&mut conn, "fetcher", &id).expect("the redirect itself is granted");
    assert_eq!(
        (status.as_str(), location.as_str()),
        ("302", elsewhere.url().as_str()),
        "the host hands the redirect to the plugin, it does not follow it"
    );
    let id = publish(
        &mut conn,
        "Fetch",
        json!({"url": granted.url(), "follow": true}),
    );
    let error = fetched(&mut conn, "fetcher", &id).expect_err("following it leaves the grants");
    assert!(error.contains("HttpRequestDenied"), "{error}");
    assert_eq!(
        elsewhere.connections(),
        0,
        "nothing reached the other server"
    );
    assert_eq!(granted.connections(), 2);
    host.stop();
}

#[test]
fn a_server_that_never_answers_costs_a_call_no_more_than_its_time_limit() {
    let silent = Loopback::start(|_, _| std::thread::sleep(Duration::from_secs(60)));
    let world = fetcher(&[&silent], "timeout_ms = 1000\nmax_attempts = 1", "");
    let mut host = world.host();
    host.wait_for_log("eventhost running");
    let mut conn = world.conn();
    let started = Instant::now();
    let id = publish(&mut conn, "Fetch", json!({"url": silent.url()}));
    let dlq = "events:sub:fetcher:dlq";
    let mut outcome = String::new();
    eventually("the call ends", WAIT, || {
        let st = state(&mut conn, "fetcher");
        if let Some(error) = st.get(&format!("error:{id}")) {
            outcome = format!("the plugin saw: {error}");
        } else if len(&mut conn, dlq) > 0 {
            outcome = format!("dead-lettered: {}", reason_of(&mut conn, dlq, &id));
        }
        !outcome.is_empty()
    });
    let took = started.elapsed();
    println!("a silent server: the call ended after {took:?}; {outcome}");
    assert!(
        outcome.contains("timeout")
            || outcome.contains("Timeout")
            || outcome.contains("time limit"),
        "{outcome}"
    );
    assert!(took < Duration::from_millis(2500), "{took:?}: {outcome}");
    assert_eq!(silent.connections(), 1);
    host.stop();
}

#[test]
fn a_1_gib_response_is_cut_at_its_bound_and_the_host_memory_stays_flat() {
    // Not beside the flood's bystander: pumping 14 MiB through loopback
    // would be measured as the flood's cost.
    let _one = one_attack_at_a_time();
    const GIB: u64 = 1 << 30;
    let huge = Loopback::start(|stream, written| {
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {GIB}\r\nConnection: close\r\n\r\n");
        let _ = stream.write_all(head.as_bytes());
        let chunk = vec![b'x'; 64 << 10];
        let mut sent = 0;
        while sent < GIB && stream.write_all(&chunk).is_ok() {
            sent += chunk.len() as u64;
            written.fetch_add(chunk.len() as u64, Ordering::SeqCst);
        }
    });
    // Time enough to read 8 MiB on a busy machine: the bound, not the
    // clock, ends this call.
    let world = slow_fetcher(&[&huge], 10_000);
    let mut host = world.host();
    host.wait_for_log("eventhost running");
    let mut conn = world.conn();
    // Once warm: the first call's compile and instance are not the response.
    let warm = publish(&mut conn, "Fetch", json!({"url": "http://127.0.0.2:1/"}));
    fetched(&mut conn, "fetcher", &warm).expect_err("warming up");
    let before = peak_mib(&host);
    let id = publish(&mut conn, "Fetch", json!({"url": huge.url()}));
    let error = fetched(&mut conn, "fetcher", &id).expect_err("the body is over its bound");
    let grew = peak_mib(&host) - before;
    let written = huge.written.load(Ordering::SeqCst) >> 20;
    println!("a 1 GiB response: the plugin saw {error:?}; the server wrote {written} MiB; host peak RSS +{grew} MiB");
    assert!(written < 256, "the host read on: {written} MiB of 1,024");
    assert!(grew < 64, "the host's peak RSS grew {grew} MiB");
    host.stop();
}

#[test]
fn a_plugin_sending_requests_without_end_leaves_a_bystander_half_its_pace() {
    let _one = one_attack_at_a_time();
    let server = Loopback::ok();
    let world = fetcher(
        &[&server],
        "concurrency = 8\ntimeout_ms = 1000\nmax_attempts = 1",
        BYSTANDER,
    );
    let mut host = world.host();
    host.wait_for_log("eventhost running");
    let alone = Pace::measure(&world, 1000, WAIT);
    let url = server.url();
    let attack = Attack::start(&world, Duration::from_millis(100), move |conn| {
        publish(conn, "Fetch", json!({"url": url, "times": 1_000_000}))
    });
    let during = Pace::measure(&world, 1000, WAIT);
    let sent = attack.stop();
    let mut conn = world.conn();
    eventually("every attacking call ends", WAIT, || {
        len(&mut conn, "events:sub:fetcher:dlq") == sent.len()
    });
    let requests = server.connections();
    println!(
        "{} calls sending requests without end ({requests} requests reached the server): \
         bystander {alone} alone, {during} during",
        sent.len()
    );
    // The attack was real: its calls sent request after request until
    // their time was up.
    let reasons = dlq_reasons(&mut conn, "events:sub:fetcher:dlq");
    assert!(!reasons.is_empty(), "no attacking call ended");
    assert!(
        reasons.iter().all(|r| r.contains("time limit")),
        "{reasons:?}"
    );
    assert!(requests > 2 * reasons.len() as u64, "{requests} requests");
    during.holds_against(&alone);
    host.stop();
}
