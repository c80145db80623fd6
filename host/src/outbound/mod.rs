//! Outbound HTTP from plugins, through the standard
//! `wasi:http/outgoing-handler`: a subscriber reaches only what its
//! `grants.http` name, the host resolves names itself and connects only to
//! an address it checked, and every request is bounded in time (the call's
//! limit), bytes and number. Knows nothing of Redis.

mod address;
mod after_commit;
mod grant;
mod send;

pub use after_commit::{AfterCommitSender, SEND_TIMEOUT};

pub use grant::{GrantedHost, HttpGrant, Target};
pub use send::{
    Policy, RequestRecord, Sockets, IN_FLIGHT_PER_INSTANCE, IN_FLIGHT_PER_SUBSCRIBER,
    MAX_REQUEST_BODY, MAX_RESPONSE_BODY,
};

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use http_body_util::BodyExt;
use tokio::sync::Semaphore;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// The roots an HTTPS request of a subscriber trusts: the usual public
/// ones, plus the CAs in `ca_file` (PEM) for private endpoints.
pub fn tls_config(ca_file: Option<&Path>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.into(),
    };
    if let Some(file) = ca_file {
        use rustls::pki_types::pem::PemObject;
        let certificates = rustls::pki_types::CertificateDer::pem_file_iter(file)
            .with_context(|| format!("cannot read the CA file {}", file.display()))?;
        let mut added = 0;
        for certificate in certificates {
            let certificate = certificate.with_context(|| {
                format!("{} holds a certificate that is not PEM", file.display())
            })?;
            roots.add(certificate).with_context(|| {
                format!("{} holds a certificate rustls refuses", file.display())
            })?;
            added += 1;
        }
        anyhow::ensure!(added > 0, "{} holds no certificate", file.display());
    }
    // The one crypto provider built in (ring), TLS 1.2 and 1.3.
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The header a request's idempotency key goes in.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The header of the W3C trace context.
const TRACEPARENT: &str = "traceparent";

/// What a call's requests carry from its event.
pub struct CallContext {
    /// The subscriber and the event: the same on every run of the event.
    pub seed: String,
    /// The event's trace context, if it has one.
    pub traceparent: Option<String>,
}

/// One instance's `wasi:http` hooks: its subscriber's policy, its own
/// bound on requests in flight, and the call its requests belong to.
pub struct Hooks {
    policy: Arc<Policy>,
    in_flight: Arc<Semaphore>,
    call: Option<CallRequests>,
}

/// The requests of one call: what their idempotency keys derive from.
struct CallRequests {
    /// When the call started: which call this is.
    started: std::time::Instant,
    /// The subscriber and the event: the same on every run of the event.
    seed: String,
    /// Sent as `traceparent` unless the plugin sets its own.
    traceparent: Option<http::HeaderValue>,
    /// The index of the call's next request.
    next: u32,
    /// When the call's time is up: no request waits past it.
    deadline: std::time::Instant,
    /// The first request of the call the grants denied, and why: a call
    /// that then fails says so in its reason, since a client may tell its
    /// plugin no more than "network error".
    denied: Option<String>,
}

impl Hooks {
    /// Hooks for a new instance of the subscriber whose `policy` this is.
    pub fn new(policy: Arc<Policy>) -> Self {
        Hooks {
            policy,
            in_flight: Arc::new(Semaphore::new(IN_FLIGHT_PER_INSTANCE)),
            call: None,
        }
    }

    /// The subscriber's policy.
    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// Requests from now on belong to the call that started at `started`
    /// (its time is up at `deadline`; `context` says what its requests
    /// carry), or to no call. Called on each use of `wasi:http`, so a call
    /// that makes no request costs nothing here; the context is made once
    /// per call that does.
    pub fn enter_call(
        &mut self,
        call: Option<(std::time::Instant, std::time::Instant)>,
        context: impl FnOnce() -> CallContext,
    ) {
        match call {
            Some((started, _)) if self.call.as_ref().is_some_and(|c| c.started == started) => {}
            Some((started, deadline)) => {
                let CallContext { seed, traceparent } = context();
                self.call = Some(CallRequests {
                    started,
                    seed,
                    traceparent: traceparent.and_then(|t| http::HeaderValue::from_str(&t).ok()),
                    next: 0,
                    deadline,
                    denied: None,
                })
            }
            None => self.call = None,
        }
    }
}

impl Hooks {
    /// The first request the grants denied in the call that started at
    /// `started`, taken: `GET <url>: HttpRequestDenied: ...`.
    pub fn denied_in(&mut self, started: std::time::Instant) -> Option<String> {
        let call = self.call.as_mut().filter(|c| c.started == started)?;
        call.denied.take()
    }
}

/// The `Idempotency-Key` of a call's request number `index`: derived from
/// the subscriber, the event and the index, so it is the same on every run
/// of the event (a re-run, a retry, a replay) and differs across events,
/// and a provider can tell a repeated request from a new one.
pub fn idempotency_key(seed: &str, index: u32) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        format!("eventhost:{seed}/http/{index}").as_bytes(),
    )
    .to_string()
}

/// The `Idempotency-Key` of a call's queued request number `index` (see
/// `send-after-commit`): like [`idempotency_key`], stable across runs of
/// the event, and apart from the keys of its direct requests.
pub fn after_commit_key(seed: &str, index: u32) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        format!("eventhost:{seed}/after-commit/{index}").as_bytes(),
    )
    .to_string()
}

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn std::future::Future<Output = Result<(), Error>> + Send>,
    ) -> Box<
        dyn std::future::Future<
                Output = Result<
                    (
                        http::Response<WasiBody>,
                        Box<dyn std::future::Future<Output = Result<(), Error>> + Send>,
                    ),
                    Error,
                >,
            > + Send,
    > {
        let mut request = request;
        if let Some(call) = &mut self.call {
            let index = call.next;
            call.next += 1;
            if call.denied.is_none() {
                let uri = request.uri().to_string();
                if let Err(why) = self.policy.admits(&uri) {
                    call.denied = Some(format!("{} {uri}: {why}", request.method()));
                }
            }
            // The plugin's own key, if it set one, stands.
            if !request.headers().contains_key(IDEMPOTENCY_KEY) {
                let key = idempotency_key(&call.seed, index);
                let value = http::HeaderValue::from_str(&key).expect("a UUID is a header value");
                request.headers_mut().insert(IDEMPOTENCY_KEY, value);
            }
            if let Some(traceparent) = &call.traceparent {
                if !request.headers().contains_key(TRACEPARENT) {
                    request
                        .headers_mut()
                        .insert(TRACEPARENT, traceparent.clone());
                }
            }
        }
        let policy = self.policy.clone();
        let instance = self.in_flight.clone();
        let deadline = self.call.as_ref().map(|call| call.deadline);
        Box::new(async move {
            let (response, connection) = policy.send(request, options, instance, deadline).await?;
            Ok((response.map(BodyExt::boxed_unsync), connection))
        })
    }
}
