//! The HTTP listener under attack, with the real binary at the 1,024
//! descriptors of the reporter's machine: 1,100 connections that never
//! finish their headers and 200 that send ~384 KB of headers each, kept up
//! (reopened as the host closes them) while `/healthz` is asked, the
//! bystander is measured and events are handled; and a request that names
//! the host by another name than an IP address or `localhost` (DNS
//! rebinding) is refused on every route.

mod support;

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use eventhost::http::listener::{
    connection_cap, BODY_READ_TIMEOUT, HEADER_READ_TIMEOUT, MAX_BODY_BYTES, MAX_HEADER_BYTES,
};
use support::attack::{peak_mib, Pace, BYSTANDER};
use support::*;

/// Connections that never finish their request line and headers.
const IDLE: usize = 1100;
/// Connections that send header bytes slowly, up to [`DRIBBLED`] each.
const DRIBBLERS: usize = 200;
const DRIBBLED: usize = 384 * 1024;
/// No attack lasts longer, nor opens more connections.
const ATTACK_MAX: Duration = Duration::from_secs(180);
const OPENED_MAX: usize = 60_000;

/// The host's limit on open files, as on the reporter's machine.
const NOFILE: u64 = 1024;

/// `eventhost run` on `world` with RLIMIT_NOFILE at `nofile` (soft and
/// hard), serving.
fn host_with_nofile(world: &World, nofile: u64) -> Host {
    let mut command = Command::new(eventhost_bin());
    command.args(["run", "--config"]).arg(world.config());
    // SAFETY: setrlimit is async-signal-safe; the values are computed
    // before the fork.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: nofile,
                rlim_max: nofile,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut host = Host::spawn(command);
    host.wait_for_log("eventhost running");
    host
}

/// The read token of [`listening_world`]: the console's reads need it.
const READ_TOKEN: &str = "listener-test-read-token";

/// A world whose host listens on a free loopback port; the address.
fn listening_world(subscribers: &str) -> (World, SocketAddr) {
    let world = World::new(&["probe.wasm"], "");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    world.configure(&format!(
        "[http]\nlisten = \"{addr}\"\nread_token = \"{READ_TOKEN}\"\n\n{subscribers}"
    ));
    (world, addr)
}

/// One request on a connection of its own; the status and body, within
/// `limit` in all, or why not.
fn request(
    addr: SocketAddr,
    head: &str,
    body: &[u8],
    limit: Duration,
) -> Result<(u16, String), String> {
    let started = Instant::now();
    let mut stream =
        TcpStream::connect_timeout(&addr, limit).map_err(|e| format!("connect: {e}"))?;
    let left = || {
        limit
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(1))
    };
    stream.set_write_timeout(Some(left())).unwrap();
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body))
        .map_err(|e| format!("send: {e}"))?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        stream.set_read_timeout(Some(left())).unwrap();
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(e) if answer.is_empty() => return Err(format!("no answer within {limit:?}: {e}")),
            Err(_) => break,
        }
        if started.elapsed() > limit {
            break;
        }
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}

/// `GET path` with `Host: host` and the read token.
fn get(addr: SocketAddr, path: &str, host: &str) -> Result<(u16, String), String> {
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {READ_TOKEN}\r\n\
         Connection: close\r\n\r\n"
    );
    request(addr, &head, b"", Duration::from_secs(10))
}

/// `/healthz` answered 200 within 2 s: how long it took.
fn healthz(addr: SocketAddr) -> Result<Duration, String> {
    let started = Instant::now();
    let head = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let (status, body) = request(addr, &head, b"", Duration::from_secs(2))?;
    let took = started.elapsed();
    if status != 200 || !body.contains("\"alive\":true") {
        return Err(format!("answered {status} {body:?}"));
    }
    Ok(took)
}

/// How many descriptors process `pid` has open.
fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Whether the host closed `stream` (non-blocking): end of stream or an
/// error; bytes (an error page) are read past.
fn closed(mut stream: &TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
}

/// The attack, kept up in background threads until stopped.
struct Flood {
    stop: Arc<AtomicBool>,
    opened: Arc<AtomicUsize>,
    idle: JoinHandle<Vec<TcpStream>>,
    dribblers: Vec<JoinHandle<()>>,
}

/// A request line and headers that never end.
const UNFINISHED: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Never-Done: ";

fn open_unfinished(addr: SocketAddr) -> Option<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.write_all(UNFINISHED).ok()?;
    stream.set_nonblocking(true).ok()?;
    Some(stream)
}

impl Flood {
    fn start(addr: SocketAddr) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let opened = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let going = {
            let (stop, opened) = (stop.clone(), opened.clone());
            move || {
                !stop.load(Ordering::Relaxed)
                    && started.elapsed() < ATTACK_MAX
                    && opened.load(Ordering::Relaxed) < OPENED_MAX
            }
        };
        // The dribblers first, so that on a host without bounds they are
        // let in before the descriptors run out.
        let dribblers = (0..DRIBBLERS)
            .map(|_| {
                let (going, opened) = (going.clone(), opened.clone());
                std::thread::spawn(move || dribble(addr, &going, &opened))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        let idle = {
            let (going, opened) = (going.clone(), opened.clone());
            std::thread::spawn(move || {
                let mut streams = Vec::with_capacity(IDLE);
                while streams.len() < IDLE && going() && started.elapsed() < Duration::from_secs(30)
                {
                    if let Some(stream) = open_unfinished(addr) {
                        streams.push(stream);
                        opened.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // Kept up: what the host closes is opened again, at most
                // 100 every 200 ms.
                while going() {
                    std::thread::sleep(Duration::from_millis(200));
                    let mut budget = 100;
                    for stream in &mut streams {
                        if budget == 0 || !going() {
                            break;
                        }
                        if closed(stream) {
                            if let Some(again) = open_unfinished(addr) {
                                *stream = again;
                                opened.fetch_add(1, Ordering::Relaxed);
                            }
                            budget -= 1;
                        }
                    }
                }
                streams
            })
        };
        Flood {
            stop,
            opened,
            idle,
            dribblers,
        }
    }

    /// Stops opening connections; returns the unfinished ones still held
    /// and when the last was opened.
    fn stop(self) -> (Vec<TcpStream>, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let streams = self.idle.join().expect("the idle flood");
        for d in self.dribblers {
            d.join().expect("a dribbler");
        }
        (streams, self.opened.load(Ordering::Relaxed))
    }
}

/// One dribbler: header lines of 1 KiB, 8 every 40 ms, up to
/// [`DRIBBLED`], then held; opened again 500 ms after the host closes it.
fn dribble(addr: SocketAddr, going: &dyn Fn() -> bool, opened: &AtomicUsize) {
    let line = format!("X-Pad: {}\r\n", "a".repeat(1024 - 9));
    while going() {
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        opened.fetch_add(1, Ordering::Relaxed);
        stream
            .set_write_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let mut alive = stream
            .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            .is_ok();
        let mut sent = 0;
        while alive && sent < DRIBBLED && going() {
            for _ in 0..8 {
                if stream.write_all(line.as_bytes()).is_err() {
                    alive = false;
                    break;
                }
                sent += line.len();
            }
            std::thread::sleep(Duration::from_millis(40));
        }
        stream.set_nonblocking(true).unwrap();
        while alive && going() {
            std::thread::sleep(Duration::from_millis(100));
            alive = !closed(&stream);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_flood_of_unfinished_requests_leaves_healthz_events_and_memory_alone() {
    let _one = one_attack_at_a_time();
    let (world, addr) = listening_world(BYSTANDER);
    let host = host_with_nofile(&world, NOFILE);
    healthz(addr).expect("/healthz answers before the attack");
    let wait = Duration::from_secs(60);
    let alone = Pace::measure(&world, 1000, wait);
    let baseline = peak_mib(&host);
    let fds_before = descriptors(host.pid());
    eprintln!("alone: {alone}, peak RSS {baseline} MiB");

    let mut failures: Vec<String> = Vec::new();
    let flood = Flood::start(addr);
    // Until the 1,100 are open (a few seconds at most).
    std::thread::sleep(Duration::from_secs(3));
    let mut latencies = Vec::new();
    let mut probe = |failures: &mut Vec<String>, when: &str| match healthz(addr) {
        Ok(took) => latencies.push(took),
        Err(err) => failures.push(format!("/healthz {when}: {err}")),
    };
    probe(&mut failures, "as the flood starts");
    let mut fds_most = descriptors(host.pid());
    let during = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Pace::measure(&world, 1000, Duration::from_secs(20))
    }));
    probe(&mut failures, "after the bystander was measured");
    for _ in 0..3 {
        fds_most = fds_most.max(descriptors(host.pid()));
        probe(&mut failures, "later in the flood");
        std::thread::sleep(Duration::from_millis(500));
    }
    // Events published during the flood are handled, none dead-lettered.
    let mut conn = world.conn();
    let ids: Vec<String> = (0..50)
        .map(|_| publish(&mut conn, "Ping", serde_json::json!({})))
        .collect();
    let handled = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if seen_all(&mut conn, "bystander", &ids) {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let peak = peak_mib(&host);
    let stopped = Instant::now();
    let (streams, opened) = flood.stop();
    let dead = len(&mut conn, "events:sub:bystander:dlq");

    // Once nobody reopens them, every unfinished connection is closed
    // by the host within the header timeout.
    let deadline = stopped + HEADER_READ_TIMEOUT + Duration::from_secs(3);
    let mut open = streams.len();
    while Instant::now() < deadline {
        open = streams.iter().filter(|s| !closed(s)).count();
        if open == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let closed_after = stopped.elapsed();
    let after = healthz(addr);

    latencies.sort();
    eprintln!(
        "during the flood ({opened} connections opened in all): /healthz answered {} of {} \
         probes, slowest {:?}; bystander {}; {} of 50 events handled in 20 s, {dead} \
         dead-lettered; peak RSS {baseline} -> {peak} MiB; {open} of {} unfinished \
         connections open {closed_after:.1?} after the flood stopped; /healthz after: {after:?}",
        latencies.len(),
        latencies.len() + failures.len(),
        latencies.last(),
        match &during {
            Ok(pace) => pace.to_string(),
            Err(_) => "did not handle its events in time".into(),
        },
        {
            let state = state(&mut conn, "bystander");
            ids.iter()
                .filter(|id| state.contains_key(&format!("seen:{id}")))
                .count()
        },
        streams.len(),
    );
    if !handled {
        failures.push("the events published during the flood were not all handled".into());
    }
    if dead != 0 {
        failures.push(format!("{dead} events were dead-lettered during the flood"));
    }
    // The listener's sockets stay within its share of what the host
    // keeps for itself (and a few closing).
    let fds_allowed = fds_before + connection_cap(NOFILE as usize) + 16;
    eprintln!(
        "descriptors: {fds_before} before, at most {fds_most} during (allowed {fds_allowed})"
    );
    if fds_most > fds_allowed {
        failures.push(format!(
            "the host held {fds_most} descriptors during the flood, {fds_before} before"
        ));
    }
    if peak > baseline + 100 {
        failures.push(format!("peak RSS went from {baseline} to {peak} MiB"));
    }
    if open != 0 {
        failures.push(format!(
            "{open} unfinished connections still open {closed_after:.1?} after the flood stopped"
        ));
    }
    match during {
        Ok(during) => {
            if let Err(panic) = std::panic::catch_unwind(|| during.holds_against(&alone)) {
                failures.push(format!(
                    "the bystander: {}",
                    panic.downcast_ref::<String>().cloned().unwrap_or_default()
                ));
            }
        }
        Err(_) => failures.push("the bystander did not handle its events in time".into()),
    }
    assert!(
        failures.is_empty(),
        "under the flood:\n{}",
        failures.join("\n")
    );
}

/// More connections than the cap that each send a POST's headers, then
/// its body slowly (the console's replay: no token is needed to start),
/// cannot hold the listener: a body is read before its connection counts
/// as answering, so such connections are closed to make room, and each is
/// cut off with 408 after [`BODY_READ_TIMEOUT`]. `/healthz` answers
/// throughout (it could not when a body was read inside the handler).
#[test]
fn slow_bodies_cannot_hold_the_listener() {
    let (world, addr) = listening_world(&format!("{PROBE}events = [\"Ping\"]\n"));
    let _host = host_with_nofile(&world, NOFILE);
    let cap = connection_cap(NOFILE as usize);
    let head = format!(
        "POST /api/dlq/probe/replay HTTP/1.1\r\nHost: {addr}\r\nContent-Type: \
         application/json\r\nContent-Length: 1000\r\n\r\n{{\"ids\":"
    );
    let slow_body = || {
        let mut stream = TcpStream::connect(addr).ok()?;
        stream.write_all(head.as_bytes()).ok()?;
        Some(stream)
    };
    let slow: Vec<TcpStream> = (0..cap + 20).filter_map(|_| slow_body()).collect();
    assert_eq!(slow.len(), cap + 20, "every slow connection was opened");
    std::thread::sleep(Duration::from_millis(500));
    // One more, once the connections closed to make room are gone.
    let mut newest = slow_body().expect("a connection is accepted");
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..5 {
        let took = healthz(addr).expect("/healthz answers beside slow bodies");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
    // The newest slow body is still in the table: cut off at the timeout.
    newest
        .set_read_timeout(Some(BODY_READ_TIMEOUT + Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = newest.read(&mut buf).unwrap_or(0);
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
}

#[test]
fn headers_and_bodies_are_bounded() {
    let (world, addr) = listening_world(&format!("{PROBE}events = [\"Ping\"]\n"));
    let _host = world.host();
    let limit = Duration::from_secs(10);
    let big = format!("X-Big: {}\r\n", "a".repeat(MAX_HEADER_BYTES));
    let head = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n{big}Connection: close\r\n\r\n");
    let answer = request(addr, &head, b"", limit);
    assert!(
        matches!(answer, Ok((431, _))) || answer.is_err(),
        "headers past {MAX_HEADER_BYTES} bytes are refused: {answer:?}"
    );
    let body = vec![b' '; MAX_BODY_BYTES + 1];
    let head = format!(
        "POST /api/dlq/probe/purge HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let answer = request(addr, &head, &body, limit);
    assert!(
        matches!(answer, Ok((413, _))),
        "a body past {MAX_BODY_BYTES} bytes is refused: {answer:?}"
    );
    // A kept-alive connection waiting for its next request is closed
    // after the header timeout too.
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(stream, "GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    let started = Instant::now();
    stream
        .set_read_timeout(Some(HEADER_READ_TIMEOUT + Duration::from_secs(5)))
        .unwrap();
    let closed = matches!(stream.read(&mut buf), Ok(0) | Err(_));
    assert!(
        closed && started.elapsed() < HEADER_READ_TIMEOUT + Duration::from_secs(3),
        "an idle kept-alive connection is closed after {HEADER_READ_TIMEOUT:?} ({:?})",
        started.elapsed()
    );
}

#[test]
fn a_name_that_could_be_rebound_is_refused_on_every_route() {
    let (world, addr) = listening_world(&format!("{PROBE}events = [\"Ping\"]\n"));
    let _host = world.host();
    let port = addr.port();
    for path in ["/api/status", "/metrics", "/healthz", "/", "/api/dlq/probe"] {
        for evil in [
            "evil.example",
            &format!("evil.example:{port}"),
            "127.0.0.1.nip.io",
        ] {
            let (status, body) = get(addr, path, evil).unwrap();
            assert_eq!(status, 421, "{path} with Host {evil}: {body}");
            assert!(
                body.contains("127.0.0.1") && body.contains("localhost"),
                "the refusal says how to reach the host: {body}"
            );
        }
        for good in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
            let (status, body) = get(addr, path, &good).unwrap();
            assert_eq!(status, 200, "{path} with Host {good}: {body}");
        }
    }
    // An absolute URI names the host too.
    let head = format!(
        "GET http://evil.example:{port}/api/status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Connection: close\r\n\r\n"
    );
    let (status, _) = request(addr, &head, b"", Duration::from_secs(10)).unwrap();
    assert_eq!(status, 421, "an absolute URI with another name");
}
