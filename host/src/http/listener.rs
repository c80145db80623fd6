//! The listener's own accept loop: every door has a bound.
//!
//! `axum::serve` accepts every connection and keeps it as long as the
//! client likes, with hyper's ~400 KB header buffer: 1,100 connections that
//! never finished their headers held a host at its 1,024-descriptor limit
//! (`/healthz` unanswered, a plugin instance refused its memfd, a reload
//! refused), and 200 of them growing their headers took 130 MB. Here:
//!
//! - at most [`connection_cap`] connections are open at once (at most
//!   [`MAX_CONNECTIONS`], and half of what the host keeps of its
//!   descriptors for itself). Past it, the oldest connection that is not
//!   being answered is closed to make room for the new one, so a flood of
//!   connections that say nothing cannot keep `/healthz` out; when every
//!   connection is being answered, the new one is closed at once;
//! - a request's line and headers must arrive within
//!   [`HEADER_READ_TIMEOUT`] and hold at most [`MAX_HEADER_BYTES`]
//!   (hyper answers 431 past it);
//! - a connection on which no byte moves for [`IDLE_TIMEOUT`] while no
//!   request is being answered (a client that does not read its answer) is
//!   closed;
//! - a request body holds at most [`MAX_BODY_BYTES`] (413 past it) and
//!   must arrive within [`BODY_READ_TIMEOUT`] (408 past it), read before
//!   the connection counts as answering, so a client that sends a body
//!   slowly cannot hold its slot;
//! - every request names this host by an IP address or as `localhost`
//!   ([`local_host`]): any other name may have been rebound to this address
//!   by another site's page (DNS rebinding), which could then read the
//!   console; such requests are refused with 421.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::config::plugins_descriptor_share;

/// Most connections open at once. A console, a Prometheus and a
/// supervisor need a handful; 256 leaves room for many of each and keeps
/// the listener's memory (a few tens of KiB a connection) and descriptors
/// small. Lowered by [`connection_cap`] when the descriptor limit is low.
pub const MAX_CONNECTIONS: usize = 256;

/// Time a client has to send a request's line and headers, from when the
/// connection is ready for it (accepted, or its previous answer sent: a
/// kept-alive connection waiting for its next request is closed after it
/// too, hyper's header timer runs while it waits). A loopback or LAN
/// client sends its headers in milliseconds; 5 s also serves a slow link,
/// and frees a slot taken by a client that says nothing within seconds.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Time a connection may go without a byte read or written while no
/// request is being answered: a client that does not read its answer
/// holds its slot and the answer's memory no longer than this.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Most bytes a request's line and headers may take (hyper's read buffer;
/// it answers 431 past it). Browsers send 1–2 KiB, a few KiB of cookies
/// at most for a loopback address; hyper's default, ~400 KiB a
/// connection, let 200 connections take 130 MB.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Most bytes a request body may take (413 past it). The console's
/// replay and purge send a JSON choice of entries: ids (24 bytes each) or
/// filters; 64 KiB is over two thousand ids.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Time a client has to send a request's body once its headers are in:
/// the console's largest body is a few KiB.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The share of the host's own descriptors the listener may take: half.
/// The other half is for Redis connections, the plugin files being read,
/// compilers' pipes, instances' memory files and logs.
const SHARE_OF_RESERVE: usize = 2;

/// Connections past the cap whose sockets may still be closing (evicted,
/// their tasks not yet run): the real bound is cap + this.
const CLOSING_SLACK: usize = 16;

/// How often a connection checks whether it has been idle too long.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// How long a connection has to finish its request once the host stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How many connections may be open at once at a process limit of
/// `nofile` descriptors: [`MAX_CONNECTIONS`], and at most half of what the
/// plugins leave the host ([`plugins_descriptor_share`]). At 1,024 the
/// host keeps 256 and the listener may take 128; from 2,048 up (the host
/// keeps 512) it takes 256.
pub fn connection_cap(nofile: usize) -> usize {
    let reserve = nofile - plugins_descriptor_share(nofile);
    (reserve / SHARE_OF_RESERVE).clamp(1, MAX_CONNECTIONS)
}

/// The process's limit on open files now (the plugin runtime raises the
/// soft limit to the hard one after the listener starts).
fn nofile_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes `limit`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
}

/// Whether `host`, a `Host` header's value (or a URI's authority), names
/// this host in a way no other site can rebind: an IPv4 literal, an IPv6
/// literal in brackets, or `localhost`, each with or without a port.
pub fn local_host(host: &str) -> bool {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return false;
        };
        if inside.parse::<Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return false,
            },
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) => (Some(name), Some(port)),
            None => (Some(host), None),
        }
    };
    let port_ok =
        port.is_none_or(|p| p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok());
    let name_ok = name.is_none_or(|n| {
        n.eq_ignore_ascii_case("localhost") || n.parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv4())
    });
    port_ok && name_ok
}

/// Refuses a request whose `Host` (or absolute URI) names this host by a
/// name other than an IP address or `localhost`. A request without a
/// `Host` (HTTP/1.0 from a script) is served: a browser always sends one.
async fn check_host(State(bound): State<SocketAddr>, request: Request, next: Next) -> Response {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let named = hosts.next();
    let ok = match (named, hosts.next()) {
        (_, Some(_)) => false,
        (Some(value), None) => value.to_str().is_ok_and(local_host),
        (None, None) => true,
    } && request
        .uri()
        .authority()
        .is_none_or(|a| local_host(a.as_str()));
    if ok {
        return next.run(request).await;
    }
    let how = if bound.ip().is_unspecified() {
        format!(
            "by its IP address or as localhost, e.g. http://127.0.0.1:{}/",
            bound.port()
        )
    } else if bound.ip().is_loopback() {
        format!("as http://{bound}/ or http://localhost:{}/", bound.port())
    } else {
        format!("by its IP address, as http://{bound}/")
    };
    let mut response = (
        StatusCode::MISDIRECTED_REQUEST,
        format!(
            "refused: reach this host {how}. It answers no other name, since \
             another site can point a name at it (DNS rebinding).\n"
        ),
    )
        .into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

tokio::task_local! {
    /// The connection whose request is being answered: the connection's
    /// task runs hyper's HTTP/1 dispatcher, which calls the service and
    /// polls its future within the task.
    static CONNECTION: Arc<Slot>;
}

/// Reads the request's body, within [`BODY_READ_TIMEOUT`] and
/// [`MAX_BODY_BYTES`], then marks the connection as answering the request
/// while it does, so it is not closed to make room for another. The body
/// is read first: a connection sending one slowly is not yet answering,
/// so it can be closed to make room and is cut off at the timeout.
async fn mark_busy(request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let read = axum::body::to_bytes(body, MAX_BODY_BYTES);
    let body = match tokio::time::timeout(BODY_READ_TIMEOUT, read).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => {
            let why = format!("refused: a request body holds at most {MAX_BODY_BYTES} bytes\n");
            return (StatusCode::PAYLOAD_TOO_LARGE, why).into_response();
        }
        Err(_) => {
            let why = format!("refused: the body did not arrive within {BODY_READ_TIMEOUT:?}\n");
            return (StatusCode::REQUEST_TIMEOUT, why).into_response();
        }
    };
    let request = Request::from_parts(parts, axum::body::Body::from(body));
    let slot = CONNECTION.try_with(Arc::clone).ok();
    let _busy = slot.map(Busy::new);
    next.run(request).await
}

struct Busy(Arc<Slot>);

impl Busy {
    fn new(slot: Arc<Slot>) -> Self {
        slot.busy.fetch_add(1, Ordering::AcqRel);
        Busy(slot)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
        self.0.touch();
    }
}

/// One open connection.
struct Slot {
    /// Requests being answered on it.
    busy: AtomicUsize,
    /// When a byte last moved, in ms since `epoch`.
    last_io: AtomicU64,
    epoch: Instant,
    /// Cancelled when it is closed to make room.
    evicted: CancellationToken,
}

impl Slot {
    fn touch(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.last_io.store(now, Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_io.load(Ordering::Relaxed)))
    }
}

/// The open connections, oldest first, and how many sockets are open.
struct Table {
    epoch: Instant,
    slots: Mutex<(u64, BTreeMap<u64, Arc<Slot>>)>,
    sockets: AtomicUsize,
}

/// A connection's place in the table, given back when dropped.
struct Admitted {
    table: Arc<Table>,
    key: u64,
    slot: Arc<Slot>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut slots = self.table.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.1.remove(&self.key);
        self.table.sockets.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Table {
    fn new() -> Arc<Self> {
        Arc::new(Table {
            epoch: Instant::now(),
            slots: Mutex::new((0, BTreeMap::new())),
            sockets: AtomicUsize::new(0),
        })
    }

    /// A place for a new connection within `cap`: the oldest connection
    /// not answering a request is closed if none is free; `None` if every
    /// one is answering (or too many sockets are still closing).
    fn admit(self: &Arc<Self>, cap: usize) -> Option<Admitted> {
        if self.sockets.load(Ordering::Acquire) >= cap + CLOSING_SLACK {
            return None;
        }
        let mut guard = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let (next, slots) = &mut *guard;
        while slots.len() >= cap {
            let oldest_idle = slots
                .iter()
                .find(|(_, slot)| slot.busy.load(Ordering::Acquire) == 0)
                .map(|(key, _)| *key)?;
            if let Some(slot) = slots.remove(&oldest_idle) {
                slot.evicted.cancel();
            }
        }
        let slot = Arc::new(Slot {
            busy: AtomicUsize::new(0),
            last_io: AtomicU64::new(0),
            epoch: self.epoch,
            evicted: CancellationToken::new(),
        });
        slot.touch();
        let key = *next;
        *next += 1;
        slots.insert(key, slot.clone());
        self.sockets.fetch_add(1, Ordering::AcqRel);
        Some(Admitted {
            table: self.clone(),
            key,
            slot,
        })
    }
}

/// A socket that notes when a byte moves.
struct Tracked {
    stream: TcpStream,
    slot: Arc<Slot>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.slot.touch();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.slot.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.slot.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Serves `app` on `listener` (bound to `bound`) with every bound of this
/// module, until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    bound: SocketAddr,
    app: Router,
    shutdown: CancellationToken,
) {
    let app = app
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(bound, check_host))
        .layer(middleware::from_fn(mark_busy));
    let table = Table::new();
    let mut refused_at: Option<Instant> = None;
    let mut failed_at: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(err) if is_connection_error(&err) => continue,
            Err(err) => {
                // Out of descriptors (EMFILE, ENFILE) or memory: wait for
                // some to be given back rather than spin; said once in 10 s.
                if failed_at.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!("the HTTP listener cannot accept a connection: {err}");
                    failed_at = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let cap = connection_cap(nofile_limit());
        let Some(admitted) = table.admit(cap) else {
            // Closed at once: every connection is answering a request.
            if refused_at.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                tracing::warn!(
                    "the HTTP listener has {cap} connections open, all answering: \
                     closing new ones until one is done"
                );
                refused_at = Some(Instant::now());
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let shutdown = shutdown.clone();
        let slot = admitted.slot.clone();
        tokio::spawn(CONNECTION.scope(slot, connection(stream, admitted, app, shutdown)));
    }
}

/// Errors of one connection, not of the listener.
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Serves one connection until it ends, is closed to make room, is idle
/// too long, or the host stops.
async fn connection(
    stream: TcpStream,
    admitted: Admitted,
    app: Router,
    shutdown: CancellationToken,
) {
    let slot = admitted.slot.clone();
    let io = TokioIo::new(Tracked {
        stream,
        slot: slot.clone(),
    });
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES)
        .keep_alive(true);
    let conn = builder.serve_connection(io, TowerToHyperService::new(app));
    let mut conn = std::pin::pin!(conn);
    let mut check = tokio::time::interval(IDLE_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping: Option<Instant> = None;
    loop {
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(err) = served {
                    tracing::debug!("an HTTP connection ended: {err}");
                }
                break;
            }
            () = slot.evicted.cancelled() => {
                tracing::debug!("an HTTP connection was closed to make room for another");
                break;
            }
            () = shutdown.cancelled(), if stopping.is_none() => {
                conn.as_mut().graceful_shutdown();
                stopping = Some(Instant::now());
            }
            _ = check.tick() => {
                if stopping.is_some_and(|at| at.elapsed() > SHUTDOWN_GRACE) {
                    break;
                }
                if slot.busy.load(Ordering::Acquire) == 0 && slot.idle() > IDLE_TIMEOUT {
                    tracing::debug!("an HTTP connection was idle for {IDLE_TIMEOUT:?}: closed");
                    break;
                }
            }
        }
    }
    // The socket is closed (`conn` dropped) before the slot is given
    // back (`admitted`, a parameter, dropped after the locals).
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_is_an_ip_literal_or_localhost() {
        for ok in [
            "127.0.0.1",
            "127.0.0.1:9464",
            "10.1.2.3:80",
            "0.0.0.0:1",
            "[::1]",
            "[::1]:9464",
            "[fe80::1]:65535",
            "localhost",
            "LocalHost:9464",
        ] {
            assert!(local_host(ok), "{ok} is served");
        }
        for refused in [
            "evil.example",
            "evil.example:9464",
            "127.0.0.1.nip.io",
            "127.0.0.1.nip.io:9464",
            "localhost.evil.example",
            "localhost.",
            "sub.localhost",
            "127.1",
            "0x7f.0.0.1",
            "2130706433",
            "::1",
            "[::1",
            "[::1]9464",
            "[evil.example]:80",
            "127.0.0.1:",
            "127.0.0.1:99999",
            "127.0.0.1:+80",
            "127.0.0.1:80:80",
            "localhost:http",
            "",
            ":80",
        ] {
            assert!(!local_host(refused), "{refused:?} is refused");
        }
    }

    #[test]
    fn the_cap_fits_in_the_hosts_share_of_descriptors() {
        assert_eq!(connection_cap(1024), 128);
        assert_eq!(connection_cap(256), 128);
        assert_eq!(connection_cap(2048), 256);
        assert_eq!(connection_cap(1 << 20), MAX_CONNECTIONS);
        assert_eq!(connection_cap(64), 32);
        assert_eq!(connection_cap(0), 1);
        for limit in [64, 256, 512, 1024, 1500, 4096, 65536] {
            let plugins = plugins_descriptor_share(limit);
            let cap = connection_cap(limit);
            assert!(
                plugins + cap + CLOSING_SLACK <= limit,
                "at {limit}: plugins {plugins}, listener {cap}"
            );
        }
    }

    #[test]
    fn a_full_table_closes_the_oldest_connection_not_answering() {
        let table = Table::new();
        let a = table.admit(2).unwrap();
        let b = table.admit(2).unwrap();
        let busy_a = Busy::new(a.slot.clone());
        let c = table.admit(2).unwrap();
        assert!(!a.slot.evicted.is_cancelled(), "a is answering");
        assert!(b.slot.evicted.is_cancelled(), "b is the oldest idle one");
        let busy_c = Busy::new(c.slot.clone());
        assert!(table.admit(2).is_none(), "both answering: no room");
        drop(busy_a);
        let d = table.admit(2).unwrap();
        assert!(a.slot.evicted.is_cancelled());
        assert!(!c.slot.evicted.is_cancelled());
        drop((b, busy_c));
        assert_eq!(
            table.sockets.load(Ordering::Relaxed),
            3,
            "a, c, d still open"
        );
        drop((a, c, d));
        assert_eq!(table.sockets.load(Ordering::Relaxed), 0);
        assert!(table.slots.lock().unwrap().1.is_empty());
    }
}
