//! Sending a request queued with `send-after-commit`, once its event is
//! committed: through the subscriber's [`Policy`] (its grants, the host's
//! own name resolution and address checks, the bounds), and judged by its
//! response: under 400 it is sent, 5xx or no response may pass, any other
//! 4xx will not.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::sync::Semaphore;
use wasmtime_wasi_http::Error;

use super::send::Policy;
use crate::handler::{Delivery, QueuedRequest, RequestSender};

/// How long one send may take, first byte of the response included: a
/// queued request does not run inside a call, so the call's limit does
/// not bound it.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of a response's body kept in the reason of a dead letter.
const REASON_BODY_BYTES: usize = 512;
/// Queued requests of one subscriber in flight at once.
const IN_FLIGHT: usize = 32;

/// Sends one subscriber's queued requests.
pub struct AfterCommitSender {
    policy: Arc<Policy>,
    in_flight: Arc<Semaphore>,
}

impl AfterCommitSender {
    /// Sends through `policy`, made with [`SEND_TIMEOUT`] as its limit.
    pub fn new(policy: Arc<Policy>) -> Self {
        AfterCommitSender {
            policy,
            in_flight: Arc::new(Semaphore::new(IN_FLIGHT)),
        }
    }
}

#[async_trait]
impl RequestSender for AfterCommitSender {
    async fn send(&self, queued: &QueuedRequest) -> Delivery {
        let request = match build(queued) {
            Ok(request) => request,
            Err(why) => return Delivery::Fail(why),
        };
        let sent = self
            .policy
            .clone()
            .send(request, None, self.in_flight.clone(), None)
            .await;
        let (response, connection) = match sent {
            Ok(sent) => sent,
            Err(Error::HttpRequestDenied) => {
                return Delivery::Fail("HttpRequestDenied: no grant names it now".into())
            }
            Err(Error::HttpRequestUriInvalid) => {
                return Delivery::Fail(format!("{:?} is not a URL it can send to", queued.url))
            }
            Err(err) => return Delivery::Retry(format!("no response: {err:?}")),
        };
        // The connection runs beside the body it delivers.
        let connection = tokio::spawn(async move {
            let _ = Box::into_pin(connection).await;
        });
        let status = response.status().as_u16();
        if status < 400 {
            connection.abort();
            return Delivery::Sent { status };
        }
        let head = first_bytes(response.into_body()).await;
        connection.abort();
        let reason = format!("HTTP {status}: {head}");
        if status >= 500 {
            Delivery::Retry(reason)
        } else {
            Delivery::Fail(reason)
        }
    }
}

/// The request as it goes on the wire: a committed entry was checked at
/// the call, so what fails here was written by someone else.
fn build(queued: &QueuedRequest) -> Result<http::Request<wasmtime_wasi_http::WasiBody>, String> {
    let uri: http::Uri = queued
        .url
        .parse()
        .map_err(|_| format!("{:?} is not a URL", queued.url))?;
    let mut request = http::Request::builder()
        .method(queued.method.as_str())
        .uri(uri.clone());
    if let Some(authority) = uri.authority() {
        request = request.header(http::header::HOST, authority.as_str());
    }
    for (name, value) in &queued.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let body = Bytes::from(queued.body.clone().unwrap_or_default());
    let body = Full::new(body)
        .map_err(|never| match never {})
        .boxed_unsync();
    request
        .body(body)
        .map_err(|err| format!("not a request: {err}"))
}

/// The first [`REASON_BODY_BYTES`] of a response's body, as text, for a
/// dead letter's reason; what does not come within a second is left out.
async fn first_bytes(mut body: wasmtime_wasi_http::WasiBody) -> String {
    let mut head = Vec::new();
    let read = async {
        while head.len() < REASON_BODY_BYTES {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        head.extend_from_slice(data);
                    }
                }
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), read).await;
    head.truncate(REASON_BODY_BYTES);
    // A remote server's words go to the log and the DLQ: escaped, so they
    // cannot forge a line.
    crate::telemetry::escape(&String::from_utf8_lossy(&head), 2 * REASON_BODY_BYTES)
}
