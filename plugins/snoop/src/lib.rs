//! Sandbox probe: tries things a plugin should normally not be allowed to do
//! and records each result as a state entry, `"allowed: <summary>"` or
//! `"denied: <error>"`, so tests can assert what the host's WASI sandbox
//! grants. Always returns `Ok` so the entries are committed.
//!
//! Entries: `fs` (read `/etc/hostname`), `fs_dir` (list `/`), `fs_write`
//! (create a file in the working folder), `env` (any environment
//! variables), `net` (TCP connect to config `connect`, default
//! `127.0.0.1:6379`), `net_listen` (a TCP listener on a loopback port),
//! `udp` (a UDP datagram to the `connect` address), `dns` (resolve
//! `localhost`), `clock` (wall-clock time).
//!
//! With grants, config names what to try inside them: `read` and `escape`
//! (files to read: `granted_read`, `granted_escape`), `write` (a file to
//! create: `granted_write`) and `var` (a variable: `granted_env`).

use std::fmt::Display;
use std::time::{SystemTime, UNIX_EPOCH};

use eventhost_plugin::{Event, Failure, Guest};

/// Where `net` connects when config `connect` is not set: the Redis the
/// daemon itself uses, the most tempting target for a rogue plugin.
const DEFAULT_CONNECT: &str = "127.0.0.1:6379";

struct Snoop;

impl Guest for Snoop {
    fn handle(_event: Event) -> Result<(), Failure> {
        record(
            "fs",
            std::fs::read_to_string("/etc/hostname").map(|s| format!("read {} bytes", s.len())),
        );
        record(
            "fs_dir",
            std::fs::read_dir("/").map(|entries| format!("{} entries", entries.count())),
        );
        record(
            "fs_write",
            std::fs::write("snoop-was-here.txt", "x").map(|()| "wrote snoop-was-here.txt".into()),
        );
        let vars = std::env::vars().count();
        record(
            "env",
            if vars > 0 {
                Ok(format!("{vars} variables"))
            } else {
                Err("no environment variables visible")
            },
        );
        let addr =
            eventhost_plugin::config_get("connect").unwrap_or_else(|| DEFAULT_CONNECT.into());
        record(
            "net",
            std::net::TcpStream::connect(addr.as_str()).map(|_| format!("connected to {addr}")),
        );
        record(
            "net_listen",
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| format!("listening on {a}")),
        );
        record(
            "udp",
            std::net::UdpSocket::bind("127.0.0.1:0")
                .and_then(|s| s.send_to(b"PING\r\n", addr.as_str()))
                .map(|n| format!("sent {n} bytes to {addr}")),
        );
        record(
            "dns",
            std::net::ToSocketAddrs::to_socket_addrs("localhost:80")
                .map(|found| format!("localhost is {:?}", found.collect::<Vec<_>>())),
        );
        for (key, setting) in [("granted_read", "read"), ("granted_escape", "escape")] {
            if let Some(path) = eventhost_plugin::config_get(setting) {
                record(key, std::fs::read_to_string(&path));
            }
        }
        if let Some(path) = eventhost_plugin::config_get("write") {
            record(
                "granted_write",
                std::fs::write(&path, "x").map(|()| format!("wrote {path}")),
            );
        }
        if let Some(name) = eventhost_plugin::config_get("var") {
            record("granted_env", std::env::var(&name));
        }
        record(
            "clock",
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| format!("{} s since the epoch", d.as_secs())),
        );
        Ok(())
    }
}

eventhost_plugin::export!(Snoop);

/// Stores the outcome of one attempt under `key`.
fn record<E: Display>(key: &str, result: Result<String, E>) {
    let value = match result {
        Ok(summary) => format!("allowed: {summary}"),
        Err(e) => format!("denied: {e}"),
    };
    eventhost_plugin::state_set(key, &value);
}
