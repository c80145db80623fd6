//! The 0.3.0 world (`wit/v0.3`): 0.2.0's contract plus `publish-later` and
//! `retry-after`.
//!
//! Linked beside 0.1.0's and 0.2.0's, as 0.2.0 is beside 0.1.0 (see
//! [`world_v2`](super::world_v2)): the same types (`with`), the same
//! `handle` export; every function 0.3.0 shares with 0.2.0 does what
//! 0.2.0's does.

use std::time::Duration;

use super::host_api::{eventhost::plugin::host::Host as HostV1, Level, StoreData};
use super::world_v2::eventhost::plugin::host::{
    Host as HostV2, OutgoingRequest as OutgoingRequestV2,
};
use crate::handler::Due;

wasmtime::component::bindgen!({
    path: "../wit/v0.3",
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

use self::eventhost::plugin::host::{OutgoingRequest, When};

/// Links 0.3.0's host interface (0.1.0's and 0.2.0's are linked by the
/// caller).
pub fn add_to_linker(linker: &mut wasmtime::component::Linker<StoreData>) -> anyhow::Result<()> {
    self::eventhost::plugin::host::add_to_linker::<_, wasmtime::component::HasSelf<_>>(
        linker,
        |data| data,
    )
    .map_err(anyhow::Error::from)?;
    // A types-only interface: defined so a component importing it links.
    linker
        .instance("eventhost:plugin/types@0.3.0")
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
        let request = OutgoingRequestV2 {
            method: request.method,
            url: request.url,
            headers: request.headers,
            body: request.body,
            attempts: request.attempts,
        };
        HostV2::send_after_commit(self, request)
    }

    fn publish_later(
        &mut self,
        event_type: String,
        data: String,
        when: When,
    ) -> wasmtime::Result<Result<String, String>> {
        let due = match when {
            When::DelayMs(ms) => Due::After(Duration::from_millis(ms)),
            When::AtMs(ms) => Due::At(ms),
        };
        let too_far = match due {
            Due::After(delay) => delay > Due::MAX_WAIT,
            Due::At(ms) => {
                let now_ms = (crate::handler::unix_now() * 1000.0) as u64;
                ms > now_ms.saturating_add(Due::MAX_WAIT.as_millis() as u64)
            }
        };
        if too_far {
            return Ok(Err(
                "publish-later: at most a year ahead (is the time in milliseconds?)".into(),
            ));
        }
        self.publish_at(event_type, data, Some(due))
    }

    fn retry_after(&mut self, ms: u64) -> wasmtime::Result<()> {
        let call = self.call()?;
        call.retry_after = Some(Duration::from_millis(ms).min(Due::MAX_WAIT));
        Ok(())
    }
}
