//! Throughput of the after-commit sender: events whose plugin queues
//! requests with `send-after-commit` (the queue-http test plugin), sent by
//! one host to a receiver on loopback that answers 200 at once.
//!
//!     cargo bench -p eventhost --bench after_commit
//!
//! Prints, per case, requests received per second from the first event
//! published to the last request received (handling, commit and send
//! together), and the same from the first request received (the sender
//! alone, once busy). Figures, not assertions: a case that does not finish
//! within its time says so.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

/// (events, requests per event) per case.
const CASES: [(usize, u32); 3] = [(2_000, 1), (500, 10), (5_000, 1)];

fn main() {
    println!("after-commit sender: events published at once, each queuing its requests");
    println!("receiver on loopback answering 200; one host, queue-http plugin, concurrency 1\n");
    for (events, per_event) in CASES {
        measure(events, per_event);
    }
}

/// A receiver counting requests, a thread per connection (the sender opens
/// one per request); `first` is when the first one came.
fn receiver() -> (u16, Arc<AtomicUsize>, Arc<Mutex<Option<Instant>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let first = Arc::new(Mutex::new(None));
    let (c, f) = (count.clone(), first.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let (c, f) = (c.clone(), f.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
                f.lock().unwrap().get_or_insert_with(Instant::now);
                c.fetch_add(1, Ordering::Relaxed);
            });
        }
    });
    (port, count, first)
}

fn measure(events: usize, per_event: u32) {
    let (port, count, first) = receiver();
    let world = World::new(&["queue_http.wasm"], "");
    world.configure(&format!(
        "[subscribers.queuer]\nplugin = \"queue_http.wasm\"\nevents = [\"Queue\"]\n\
         [subscribers.queuer.grants]\nhttp = [\"http://127.0.0.1:{port}\"]\n"
    ));
    let mut host = world.host();
    host.wait_for_log("eventhost running");
    let mut conn = world.conn();
    let total = events * per_event as usize;
    let url = format!("http://127.0.0.1:{port}/pay");
    let started = Instant::now();
    publish_burst(
        &mut conn,
        "Queue",
        json!({"url": url, "times": per_event}),
        events,
    );
    let limit = Duration::from_secs(120);
    while count.load(Ordering::Relaxed) < total && started.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = started.elapsed();
    let got = count.load(Ordering::Relaxed);
    let since_first = first
        .lock()
        .unwrap()
        .map_or(took, |f| f.elapsed().min(took));
    let note = if got < total {
        format!("  (only {got} of {total} within {limit:?})")
    } else {
        String::new()
    };
    println!(
        "{events:>6} events × {per_event:>2} requests: {:>7.0} requests/s end to end ({:.2} s), \
         {:>7.0}/s once sending{note}",
        got as f64 / took.as_secs_f64(),
        took.as_secs_f64(),
        got as f64 / since_first.as_secs_f64(),
    );
    drop(host);
}
