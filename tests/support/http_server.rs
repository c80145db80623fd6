//! A small HTTP/1.1 server on loopback for outbound HTTP tests: it answers
//! every request `hello <path> <body>` and keeps what it was sent, so a
//! test can tell what reached it (and that a denied request did not).

use std::io::{BufRead, BufReader, Write as _};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{eventually, state};

/// One request as read off a connection: every test server parses with
/// [`read_request`].
#[derive(Clone, Debug)]
pub struct Request {
    /// The request line, e.g. `POST /charge HTTP/1.1`.
    pub line: String,
    /// The headers, names in lowercase, values trimmed.
    pub headers: Vec<(String, String)>,
    /// The body, as long as its `Content-Length` says.
    pub body: Vec<u8>,
}

impl Request {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The path of the request line.
    pub fn path(&self) -> &str {
        self.line.split_whitespace().nth(1).unwrap_or("/")
    }
}

/// Reads one request (its head, and a body of its `Content-Length`) from
/// `reader`; `None` if the connection ended before a request line.
pub fn read_request(reader: &mut impl BufRead) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
            break;
        }
        let (name, value) = header.split_once(':').unwrap_or((&header, ""));
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0usize);
    let mut body = vec![0; length];
    let _ = reader.read_exact(&mut body);
    Some(Request {
        line: line.trim().to_string(),
        headers,
        body,
    })
}

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
                let Some(request) = read_request(&mut reader) else {
                    continue;
                };
                let body = String::from_utf8_lossy(&request.body).into_owned();
                let answer = format!("hello {} {body}", request.path());
                record.lock().unwrap().push(Seen {
                    line: request.line.clone(),
                    host: request.header("host").unwrap_or_default().to_string(),
                    key: request
                        .header("idempotency-key")
                        .unwrap_or_default()
                        .to_string(),
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

/// What the fetch plugin recorded for event `id`: `Ok((status, body))` or
/// `Err(error)`.
pub fn fetched(
    conn: &mut redis::Connection,
    subscriber: &str,
    id: &str,
) -> Result<(String, String), String> {
    let mut st = std::collections::HashMap::new();
    eventually(
        "the plugin records the outcome",
        Duration::from_secs(30),
        || {
            st = state(conn, subscriber);
            st.contains_key(&format!("status:{id}")) || st.contains_key(&format!("error:{id}"))
        },
    );
    match st.get(&format!("error:{id}")) {
        Some(error) => Err(error.clone()),
        None => Ok((
            st[&format!("status:{id}")].clone(),
            st[&format!("body:{id}")].clone(),
        )),
    }
}
