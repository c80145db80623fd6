//! A small HTTP/1.1 server on loopback for outbound HTTP tests: it answers
//! every request `hello <path> <body>` and keeps what it was sent, so a
//! test can tell what reached it (and that a denied request did not).

use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// One request as the server read it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The request line, e.g. `POST /charge HTTP/1.1`.
    pub line: String,
    /// The `Host` header.
    pub host: String,
    /// The `Idempotency-Key` header, empty if absent.
    pub key: String,
    /// The body, as text.
    pub body: String,
}

/// The server: its port and what it has seen so far.
pub struct HttpServer {
    pub port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl HttpServer {
    /// Listens on a free loopback port, answering on a thread of its own
    /// for as long as the test runs.
    pub fn start() -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let (mut host, mut key, mut length) = (String::new(), String::new(), 0usize);
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                        break;
                    }
                    let (name, value) = header.split_once(':').unwrap_or((&header, ""));
                    let value = value.trim().to_string();
                    match name.to_ascii_lowercase().as_str() {
                        "host" => host = value,
                        "idempotency-key" => key = value,
                        "content-length" => length = value.parse().unwrap_or(0),
                        _ => {}
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                let body = String::from_utf8_lossy(&body).into_owned();
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                let answer = format!("hello {path} {body}");
                record.lock().unwrap().push(Seen {
                    line: line.trim().to_string(),
                    host,
                    key,
                    body,
                });
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            }
        });
        HttpServer { port, seen }
    }

    /// Every request seen so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}
