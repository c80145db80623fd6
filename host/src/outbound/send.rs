//! Sending one request of a plugin: the grant checked, the name resolved by
//! the host and each address checked, the connection made to the address
//! that passed (so a name cannot change its answer between the check and
//! the connection), with every wait clamped to the call's time limit and
//! the bytes each way bounded.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::task::AbortOnDropHandle;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

use super::address::is_internal;
use super::grant::{HttpGrant, Target};
use crate::telemetry::metrics;

/// Most bytes of a request's body.
pub const MAX_REQUEST_BODY: u64 = 8 << 20;
/// Most bytes of a response's body; past it, reading the body fails.
pub const MAX_RESPONSE_BODY: u64 = 8 << 20;
/// Requests in flight at once, all instances of one subscriber together.
pub const IN_FLIGHT_PER_SUBSCRIBER: usize = 64;
/// Requests in flight at once from one instance (one call).
pub const IN_FLIGHT_PER_INSTANCE: usize = 8;

/// What one subscriber's requests may do: shared by its instances.
pub struct Policy {
    subscriber: Arc<str>,
    grants: Vec<HttpGrant>,
    tls: Arc<rustls::ClientConfig>,
    /// The call's time limit: no wait of a request is longer.
    limit: Duration,
    in_flight: Arc<Semaphore>,
    sockets: Arc<dyn Sockets>,
    /// Every request, once [`Policy::record`] asked (`eventhost invoke`).
    journal: Mutex<Option<Vec<RequestRecord>>>,
    log_pace: LogPace,
}

/// At most one log line a second about a subscriber's requests: a plugin
/// that sends denied or failing requests in a loop must not flood the
/// host's log (each is counted in the metric all the same).
#[derive(Default)]
struct LogPace {
    state: Mutex<(Option<std::time::Instant>, u64)>,
}

impl LogPace {
    /// `Some(lines skipped since the last one)` if a line may go out now.
    fn allow(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        match state.0 {
            Some(last) if now.duration_since(last) < Duration::from_secs(1) => {
                state.1 += 1;
                None
            }
            _ => {
                state.0 = Some(now);
                Some(std::mem::take(&mut state.1))
            }
        }
    }
}

/// One request and what came of it, as `eventhost invoke` lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RequestRecord {
    pub method: String,
    pub url: String,
    /// The response's status, if one came.
    pub status: Option<u16>,
    /// Why none came (`HttpRequestDenied`, a timeout...).
    pub error: Option<String>,
    pub duration_ms: f64,
}

/// Where a connection's descriptor is counted: the subscriber's share of
/// what plugins may hold, so sockets stay out of the host's reserve.
pub trait Sockets: Send + Sync {
    /// Holds one descriptor until the returned value is dropped, or says
    /// which bound refused it.
    fn hold_one(&self) -> Result<Box<dyn Send + Sync>, String>;
}

/// A response as the guest reads it, and the connection's own future.
type Sent = (
    Response<WasiBody>,
    Box<dyn std::future::Future<Output = Result<(), Error>> + Send>,
);

impl Policy {
    /// The policy of `subscriber`: its grants, the roots it trusts for
    /// HTTPS, and its call's time limit.
    pub fn new(
        subscriber: Arc<str>,
        grants: Vec<HttpGrant>,
        tls: Arc<rustls::ClientConfig>,
        limit: Duration,
        sockets: Arc<dyn Sockets>,
    ) -> Self {
        Policy {
            subscriber,
            grants,
            tls,
            limit,
            in_flight: Arc::new(Semaphore::new(IN_FLIGHT_PER_SUBSCRIBER)),
            sockets,
            journal: Mutex::new(None),
            log_pace: LogPace::default(),
        }
    }

    /// Keeps a record of every request from now on.
    pub fn record(&self) {
        let mut journal = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        journal.get_or_insert_with(Vec::new);
    }

    /// The requests recorded so far, taken.
    pub fn take_records(&self) -> Vec<RequestRecord> {
        let mut journal = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        journal.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Whether a grant names the destination of `url`, as [`Self::send`]
    /// would find; else why not, starting `HttpRequestDenied`. Resolving
    /// the name is left to the send.
    pub fn admits(&self, url: &str) -> Result<(), String> {
        let uri: http::Uri = url.parse().map_err(|_| format!("{url:?} is not a URL"))?;
        let target = Target::of(&uri)
            .ok_or_else(|| format!("{url:?} is not an absolute http:// or https:// URL"))?;
        if self.grants.iter().any(|g| g.allows(&target)) {
            return Ok(());
        }
        Err(format!(
            "HttpRequestDenied: no grant of this subscriber names {}://{}:{} (grants.http)",
            if target.https { "https" } else { "http" },
            target.host,
            target.port
        ))
    }

    /// The subscriber it serves.
    pub fn subscriber(&self) -> &str {
        &self.subscriber
    }

    /// Sends `request` if a grant allows it; `instance` bounds the
    /// instance's requests in flight; no wait goes past `deadline`, the end
    /// of the call's time.
    pub async fn send(
        self: Arc<Self>,
        request: Request<WasiBody>,
        options: Option<RequestOptions>,
        instance: Arc<Semaphore>,
        deadline: Option<std::time::Instant>,
    ) -> Result<Sent, Error> {
        let started = std::time::Instant::now();
        let method = request.method().clone();
        let uri = request.uri().clone();
        let left = deadline.map_or(self.limit, |d| d.saturating_duration_since(started));
        let result = self
            .try_send(request, options, instance, left.min(self.limit))
            .await;
        let outcome = match &result {
            Ok((response, _)) => {
                tracing::debug!(subscriber = %self.subscriber, %method, %uri, status = response.status().as_u16(), took = ?started.elapsed(), "outbound request");
                "sent"
            }
            Err(Error::HttpRequestDenied) => "denied",
            Err(err) => {
                if let Some(skipped) = self.log_pace.allow() {
                    tracing::info!(subscriber = %self.subscriber, %method, %uri, skipped, "outbound request failed: {err}");
                }
                "failed"
            }
        };
        metrics::outbound_request(&self.subscriber, outcome);
        let mut journal = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(records) = journal.as_mut() {
            records.push(RequestRecord {
                method: method.to_string(),
                url: uri.to_string(),
                status: result.as_ref().ok().map(|(r, _)| r.status().as_u16()),
                error: result.as_ref().err().map(|err| format!("{err:?}")),
                duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            });
        }
        drop(journal);
        result
    }

    async fn try_send(
        &self,
        mut request: Request<WasiBody>,
        options: Option<RequestOptions>,
        instance: Arc<Semaphore>,
        left: Duration,
    ) -> Result<Sent, Error> {
        let target = Target::of(request.uri()).ok_or(Error::HttpRequestUriInvalid)?;
        let Some(grant) = self.grants.iter().find(|g| g.allows(&target)) else {
            if let Some(skipped) = self.log_pace.allow() {
                tracing::warn!(skipped = skipped,
                    subscriber = %self.subscriber,
                    uri = %request.uri(),
                    "outbound request denied: no grant of this subscriber names {}://{}:{} (grants.http)",
                    if target.https { "https" } else { "http" },
                    target.host,
                    target.port
                );
            }
            drain(request.into_body(), left.min(DRAIN_WAIT)).await;
            return Err(Error::HttpRequestDenied);
        };
        let permits = (
            instance
                .try_acquire_owned()
                .map_err(|_| Error::ConnectionLimitReached)?,
            self.in_flight
                .clone()
                .try_acquire_owned()
                .map_err(|_| Error::ConnectionLimitReached)?,
        );
        let waits = Waits::new(options, left);
        let address = self.resolve(&target, grant, waits.connect).await?;
        let socket = self.sockets.hold_one().map_err(|why| {
            if let Some(skipped) = self.log_pace.allow() {
            tracing::warn!(skipped = skipped, subscriber = %self.subscriber, "outbound request refused a connection: {why}");
            }
            Error::ConnectionLimitReached
        })?;

        let tcp = tokio::time::timeout(waits.connect, TcpStream::connect(address))
            .await
            .map_err(|_| Error::ConnectionTimeout)?
            .map_err(connect_error)?;
        // Without it a request written in two parts (head, then a streamed
        // body's end) waits for the server's delayed ACK: 40 ms, often.
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Stream> = if target.https {
            let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                .map_err(|_| Error::HttpRequestUriInvalid)?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone());
            let stream = tokio::time::timeout(waits.connect, tls.connect(name, tcp))
                .await
                .map_err(|_| Error::ConnectionTimeout)?
                .map_err(|_| Error::TlsCertificateError)?;
            Box::new(stream)
        } else {
            Box::new(tcp)
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(Error::from)?;
        // The connection lives as long as its response is read, no longer
        // than the call (dropped with it), and holds the permits.
        let connection = AbortOnDropHandle::new(tokio::spawn(async move {
            let _held = (permits, socket);
            connection.await
        }));

        // On the wire the request names its path only (no proxy).
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .map_err(|_| Error::HttpRequestUriInvalid)?;
        *request.uri_mut() = path;
        let request =
            request.map(|body| http_body_util::Limited::new(body, MAX_REQUEST_BODY as usize));
        let response = tokio::time::timeout(waits.first_byte, sender.send_request(request))
            .await
            .map_err(|_| Error::ConnectionReadTimeout)?
            .map_err(request_error)?;
        let response = response.map(|incoming| {
            ResponseBody {
                incoming,
                read: 0,
                between_bytes: waits.between_bytes,
                idle: Box::pin(tokio::time::sleep(waits.between_bytes)),
            }
            .boxed_unsync()
        });
        let connection = async move {
            match connection.await {
                Ok(Ok(())) | Err(_) => Ok(()),
                Ok(Err(err)) => Err(Error::from(err)),
            }
        };
        Ok((response, Box::new(connection)))
    }

    /// The first address `target` resolves to that this grant may reach: a
    /// public one, or the one it names literally.
    async fn resolve(
        &self,
        target: &Target,
        grant: &HttpGrant,
        within: Duration,
    ) -> Result<SocketAddr, Error> {
        let addresses: Vec<SocketAddr> = match target.address() {
            Some(ip) => vec![SocketAddr::new(ip, target.port)],
            None => tokio::time::timeout(
                within,
                tokio::net::lookup_host((target.host.as_str(), target.port)),
            )
            .await
            .map_err(|_| Error::DnsTimeout)?
            .map_err(|_| Error::DnsError {
                rcode: None,
                info_code: None,
            })?
            .collect(),
        };
        let usable = addresses
            .iter()
            .find(|a| !is_internal(a.ip()) || grant.names_address(a.ip()));
        match usable {
            Some(address) => Ok(*address),
            None if addresses.is_empty() => Err(Error::DestinationNotFound),
            None => {
                if let Some(skipped) = self.log_pace.allow() {
                    tracing::warn!(skipped = skipped,
                        subscriber = %self.subscriber,
                        host = %target.host,
                        "outbound request denied: {} resolves to internal addresses only ({}); \
                         only a grant that names such an address literally reaches it",
                        target.host,
                        addresses
                            .iter()
                            .map(|a| a.ip().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
                Err(Error::HttpRequestDenied)
            }
        }
    }
}

/// A connection the request goes over: plain TCP or TLS.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Stream for T {}

/// How long a request waits for each step: what the plugin asked, never
/// more than its call's time limit.
struct Waits {
    connect: Duration,
    first_byte: Duration,
    between_bytes: Duration,
}

impl Waits {
    fn new(options: Option<RequestOptions>, limit: Duration) -> Self {
        let options = options.unwrap_or_default();
        let clamp = |asked: Option<Duration>| {
            asked
                .unwrap_or(limit)
                .min(limit)
                .max(Duration::from_millis(1))
        };
        Waits {
            connect: clamp(options.connect_timeout),
            first_byte: clamp(options.first_byte_timeout),
            between_bytes: clamp(options.between_bytes_timeout),
        }
    }
}

/// How long a denied request's body is read before the denial is
/// answered: long enough for a client that writes its body while it waits
/// (all of them in practice), short enough that one holding it open
/// delays its refusal by little.
const DRAIN_WAIT: Duration = Duration::from_millis(250);

/// Reads and drops what the plugin writes of a body that will not be sent,
/// up to [`MAX_REQUEST_BODY`] bytes, its end, or `wait`. A denial answered
/// at once leaves the plugin writing into a stream that has gone, and
/// StarlingMonkey's `fetch` (JavaScript) then sometimes aborts the whole
/// component ("event loop error, but no exception is pending") instead of
/// rejecting: read, the body's writes succeed and `fetch` rejects.
async fn drain(mut body: WasiBody, wait: Duration) {
    let read = async {
        let mut bytes = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            bytes += frame.data_ref().map_or(0, |d| d.len() as u64);
            if bytes > MAX_REQUEST_BODY {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(wait, read).await;
}

fn connect_error(err: std::io::Error) -> Error {
    match err.kind() {
        std::io::ErrorKind::ConnectionRefused => Error::ConnectionRefused,
        _ => Error::Connect(err),
    }
}

/// A request that failed on its way: over its body's limit, or hyper's.
fn request_error(err: hyper::Error) -> Error {
    let mut source: Option<&dyn std::error::Error> = Some(&err);
    while let Some(cause) = source {
        if cause.is::<http_body_util::LengthLimitError>() {
            return Error::HttpRequestBodySize(Some(MAX_REQUEST_BODY));
        }
        source = cause.source();
    }
    Error::from(err)
}

/// A response's body as the plugin reads it: at most
/// [`MAX_RESPONSE_BODY`] bytes, with no longer than `between_bytes` between
/// two frames.
struct ResponseBody {
    incoming: hyper::body::Incoming,
    read: u64,
    between_bytes: Duration,
    idle: Pin<Box<tokio::time::Sleep>>,
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.read += data.len() as u64;
                    if self.read > MAX_RESPONSE_BODY {
                        return Poll::Ready(Some(Err(Error::HttpResponseBodySize(Some(
                            MAX_RESPONSE_BODY,
                        )))));
                    }
                }
                let next = tokio::time::Instant::now() + self.between_bytes;
                self.idle.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(Error::from(err)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match self.idle.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Error::ConnectionReadTimeout))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

use std::future::Future as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_log_line_a_second_says_how_many_it_skipped() {
        let pace = LogPace::default();
        assert_eq!(pace.allow(), Some(0));
        assert_eq!(pace.allow(), None);
        assert_eq!(pace.allow(), None);
        pace.state.lock().unwrap().0 = Some(std::time::Instant::now() - Duration::from_secs(2));
        assert_eq!(pace.allow(), Some(2));
    }

    #[tokio::test]
    async fn a_denied_body_is_read_to_its_end_or_for_its_wait_at_most() {
        let ended = http_body_util::Full::new(Bytes::from_static(b"amount=100"))
            .map_err(|never| match never {})
            .boxed_unsync();
        let started = std::time::Instant::now();
        drain(ended, Duration::from_secs(5)).await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "read to its end"
        );
        // A body whose writer never finishes it: the wait bounds the read.
        struct Open;
        impl Body for Open {
            type Data = Bytes;
            type Error = Error;
            fn poll_frame(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
                Poll::Pending
            }
        }
        let open = Open.boxed_unsync();
        let started = std::time::Instant::now();
        drain(open, Duration::from_millis(100)).await;
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(100) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }

    #[test]
    fn a_request_waits_what_it_asked_never_past_the_call() {
        let limit = Duration::from_millis(800);
        let asked = RequestOptions {
            connect_timeout: Some(Duration::from_millis(100)),
            first_byte_timeout: Some(Duration::from_secs(60)),
            between_bytes_timeout: None,
        };
        let waits = Waits::new(Some(asked), limit);
        assert_eq!(waits.connect, Duration::from_millis(100));
        assert_eq!(waits.first_byte, limit);
        assert_eq!(waits.between_bytes, limit);
    }
}
