//! The 0.2.0 world (`wit/v0.2`): 0.1.0's contract plus `send-after-commit`.
//!
//! The host links both worlds, so a component built against either loads:
//! 0.1.0's host interface stays as it was. 0.2.0's types are 0.1.0's
//! (`with`), and its `handle` export has the same shape, so one set of
//! bindings calls both kinds of component; only the imports differ. Every
//! function 0.2.0 shares with 0.1.0 does what 0.1.0's does.

use super::host_api::{eventhost::plugin::host::Host as HostV1, Level, StoreData};
use crate::handler::{QueuedRequest, DEFAULT_ATTEMPTS, MAX_ATTEMPTS, MAX_QUEUED_PER_CALL};
use crate::outbound;

wasmtime::component::bindgen!({
    path: "../wit/v0.2",
    world: "subscriber",
    imports: {
        "eventhost:plugin/host.state-get": async | trappable,
        default: trappable,
    },
    exports: { default: async },
    with: {
        "eventhost:plugin/types": super::host_api::eventhost::plugin::types,
    },
});

use self::eventhost::plugin::host::OutgoingRequest;

/// Links 0.2.0's host interface (0.1.0's is linked by the caller).
pub fn add_to_linker(linker: &mut wasmtime::component::Linker<StoreData>) -> anyhow::Result<()> {
    self::eventhost::plugin::host::add_to_linker::<_, wasmtime::component::HasSelf<_>>(
        linker,
        |data| data,
    )
    .map_err(anyhow::Error::from)?;
    // A types-only interface: defined so a component importing it links.
    linker
        .instance("eventhost:plugin/types@0.2.0")
        .map_err(anyhow::Error::from)?;
    Ok(())
}

impl self::eventhost::plugin::host::Host for StoreData {
    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        HostV1::log(self, level, message)
    }

    fn publish(
        &mut self,
        event_type: String,
        data: String,
    ) -> wasmtime::Result<Result<String, String>> {
        HostV1::publish(self, event_type, data)
    }

    async fn state_get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        HostV1::state_get(self, key).await
    }

    fn state_set(&mut self, key: String, value: String) -> wasmtime::Result<()> {
        HostV1::state_set(self, key, value)
    }

    fn state_delete(&mut self, key: String) -> wasmtime::Result<()> {
        HostV1::state_delete(self, key)
    }

    fn config_get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        HostV1::config_get(self, key)
    }

    fn send_after_commit(
        &mut self,
        request: OutgoingRequest,
    ) -> wasmtime::Result<Result<String, String>> {
        let subscriber = self.subscriber().to_string();
        let policy = self.http_policy().clone();
        let call = self.call()?;
        if call.effects.requests().len() >= MAX_QUEUED_PER_CALL {
            return Ok(Err(format!(
                "one call may queue at most {MAX_QUEUED_PER_CALL} requests"
            )));
        }
        if let Err(why) = check(&request, &policy) {
            if why.starts_with("HttpRequestDenied") {
                crate::telemetry::metrics::after_commit(&subscriber, "denied");
            }
            return Ok(Err(why));
        }
        let index = call.effects.requests().len() as u32;
        let seed = format!("{subscriber}/{}", call.event_id);
        let mut headers = request.headers;
        let key = match headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(outbound::IDEMPOTENCY_KEY))
        {
            // The plugin's own key stands, as for direct requests.
            Some((_, value)) => value.clone(),
            None => {
                let key = outbound::after_commit_key(&seed, index);
                headers.push((outbound::IDEMPOTENCY_KEY.to_string(), key.clone()));
                key
            }
        };
        let queued = QueuedRequest {
            key: key.clone(),
            subscriber,
            event_id: call.event_id.clone(),
            method: request.method,
            url: request.url,
            headers,
            body: request.body,
            attempts: request
                .attempts
                .unwrap_or(DEFAULT_ATTEMPTS)
                .clamp(1, MAX_ATTEMPTS),
        };
        let limit = call.effects.max_entry_bytes();
        if queued.cost() > limit {
            return Ok(Err(format!(
                "the request would be {} bytes, over the limit of {limit} \
                 (bus.max_payload_bytes)",
                queued.cost()
            )));
        }
        let after = call.effects.bytes() + queued.cost();
        call.charge(after, || {
            format!(
                "a queued request of {} KiB",
                queued.body.as_ref().map_or(0, String::len) >> 10
            )
        })?;
        call.effects.queue(queued);
        Ok(Ok(key))
    }
}

/// Why `request` cannot be queued: a bad method, URL, header or body, or
/// no grant naming its destination (`HttpRequestDenied`, as for a direct
/// request).
fn check(request: &OutgoingRequest, policy: &outbound::Policy) -> Result<(), String> {
    http::Method::from_bytes(request.method.as_bytes())
        .map_err(|_| format!("{:?} is not an HTTP method", request.method))?;
    for (name, value) in &request.headers {
        http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("{name:?} is not a header name"))?;
        http::HeaderValue::from_str(value)
            .map_err(|_| format!("the value of header {name:?} is not a header value"))?;
    }
    if request.body.as_ref().map_or(0, String::len) as u64 > outbound::MAX_REQUEST_BODY {
        return Err(format!(
            "the body is over {} bytes",
            outbound::MAX_REQUEST_BODY
        ));
    }
    policy.admits(&request.url)
}
