//! A small HTTP/1.1 receiver on loopback for the after-commit tests: it
//! keeps every request it gets (path, `Idempotency-Key`, JSON body).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::http_server::read_request;

/// One request a receiver got: its path, `Idempotency-Key` and body.
#[derive(Debug, Clone)]
pub struct Got {
    pub path: String,
    pub key: String,
    pub body: Value,
}

/// A small HTTP/1.1 receiver on loopback: answers `/reject` with 400
/// `no such account`, `/flaky` with 503 `try later` while `flaky` is set,
/// anything else with 200; keeps every request it got.
pub struct Receiver {
    pub port: u16,
    got: Arc<Mutex<Vec<Got>>>,
    /// While set, `/flaky` answers 503.
    pub flaky: Arc<Mutex<bool>>,
}

impl Receiver {
    /// On a free port.
    pub fn start() -> Receiver {
        Receiver::start_on(TcpListener::bind("127.0.0.1:0").unwrap())
    }

    /// On `listener`.
    pub fn start_on(listener: TcpListener) -> Receiver {
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let flaky = Arc::new(Mutex::new(true));
        let (record, failing) = (got.clone(), flaky.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let Some(request) = read_request(&mut reader) else {
                    continue;
                };
                let path = request.path().to_string();
                let key = request
                    .header("idempotency-key")
                    .unwrap_or_default()
                    .to_string();
                let body = request.body;
                let (status, answer) = match path.as_str() {
                    "/reject" => ("400 Bad Request", "no such account"),
                    "/flaky" if *failing.lock().unwrap() => ("503 Unavailable", "try later"),
                    _ => ("200 OK", "ok"),
                };
                record.lock().unwrap().push(Got {
                    path,
                    key,
                    body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                });
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    answer.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(answer.as_bytes());
            }
        });
        Receiver { port, got, flaky }
    }

    /// What it got so far.
    pub fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// The distinct keys received per (event, n) request.
    pub fn keys_per_request(&self) -> BTreeMap<(String, u64), BTreeSet<String>> {
        let mut keys: BTreeMap<(String, u64), BTreeSet<String>> = BTreeMap::new();
        for got in self.got() {
            let event = got.body["event"].as_str().unwrap_or_default().to_string();
            let n = got.body["n"].as_u64().unwrap_or(u64::MAX);
            keys.entry((event, n)).or_default().insert(got.key);
        }
        keys
    }
}
