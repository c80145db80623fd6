//! Rust guest SDK for eventhost plugins.
//!
//! An eventhost plugin is a WebAssembly component implementing the
//! `eventhost:plugin/subscriber` world; this crate builds against version
//! 0.3.0 (`wit/v0.3/eventhost.wit`: 0.1.0 plus [`send_after_commit`],
//! [`publish_later`] and [`retry_after`]). The host
//! calls [`Guest::handle`] once per delivered event, and the plugin talks back
//! through the host functions ([`log`], [`publish`], [`state_get`], ...).
//! This crate generates those bindings once so that plugin crates need
//! neither `wit-bindgen` nor a copy of the WIT file:
//!
//! ```no_run
//! use eventhost_plugin::{Event, Failure, Guest};
//!
//! struct Hello;
//!
//! impl Guest for Hello {
//!     fn handle(event: Event) -> Result<(), Failure> {
//!         eventhost_plugin::log(eventhost_plugin::Level::Info, &format!("got {}", event.id));
//!         Ok(())
//!     }
//! }
//!
//! eventhost_plugin::export!(Hello);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2` and a
//! `crate-type = ["cdylib"]` library: the result is a component the host can
//! load.
//!
//! Everything a handler publishes or writes to state is buffered by the host
//! and committed only if `handle` returns `Ok`, so a handler may perform its
//! effects first and fail afterwards without leaving half-done work behind.
//! Every helper here that can fail returns a [`Failure`], so handlers can use
//! `?` throughout.
//!
//! A request that must reach another service only if the event is handled
//! is queued with [`send_after_commit`] (or [`post_json_after_commit`]):
//! committed with the event like a publish, sent by the host afterwards
//! with backoff and one `Idempotency-Key`, dead-lettered with its response
//! if it never succeeds:
//!
//! ```no_run
//! # use eventhost_plugin::{Event, Failure};
//! # fn handle(event: Event) -> Result<(), Failure> {
//! let key = eventhost_plugin::post_json_after_commit(
//!     "https://api.example.com/v1/receipts",
//!     &serde_json::json!({"order": event.id}),
//! )?;
//! eventhost_plugin::log(eventhost_plugin::Level::Info, &format!("receipt queued as {key}"));
//! # Ok(()) }
//! ```

use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The raw `wit-bindgen` output. Public only because [`export!`] expands to
/// paths inside it; use the re-exports at the crate root instead.
#[doc(hidden)]
#[allow(
    clippy::too_many_arguments,
    reason = "generated code: the lowered `handle` export takes one argument per flattened field"
)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit/v0.3",
        world: "subscriber",
        // Lets plugin crates write `eventhost_plugin::export!(MyPlugin)`
        // without depending on wit-bindgen themselves.
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "eventhost_plugin::bindings",
        // So tests can `assert_eq!` on handler results.
        additional_derives: [PartialEq],
    });
}

/// Exports a type implementing [`Guest`] as the plugin's `handle` function:
/// `eventhost_plugin::export!(MyPlugin);` once per plugin crate.
#[doc(inline)]
pub use bindings::export;

/// The trait a plugin implements; `handle` is called once per event.
pub use bindings::Guest;

/// The event being handled, the ways a handler can fail, and log levels, as
/// declared in the WIT contract.
pub use bindings::eventhost::plugin::types::{Event, Failure, Level};

/// The raw host imports, re-exported at the crate root so plugins call them
/// as `eventhost_plugin::state_get(..)`; the helpers below wrap the common
/// JSON and counter patterns on top of them.
pub use bindings::eventhost::plugin::host::{
    log, publish, publish_later, retry_after, send_after_commit, state_delete, state_get,
    state_set, OutgoingRequest, When,
};

thread_local! {
    /// What `config-get` answered, by key: an instance's config never
    /// changes (the host makes new instances when it does), so each key
    /// crosses into the host once per instance, not once per event. A
    /// list: a plugin asks for a few keys, and hashing costs more.
    static CONFIG: std::cell::RefCell<Vec<(String, Option<String>)>> = Default::default();
}

/// The value of `key` in this subscriber's `[subscribers.NAME.config]`
/// table, if set. Asked of the host once per key and instance.
pub fn config_get(key: &str) -> Option<String> {
    let known = CONFIG.with_borrow(|config| {
        let found = config.iter().find(|(k, _)| k == key);
        found.map(|(_, value)| value.clone())
    });
    if let Some(value) = known {
        return value;
    }
    let value = bindings::eventhost::plugin::host::config_get(key);
    CONFIG.with_borrow_mut(|config| config.push((key.to_string(), value.clone())));
    value
}

/// Parses the event's JSON data into `T`.
///
/// Data that does not parse will never parse, so the error is a
/// [`Failure::Reject`] naming the event: the event goes straight to the DLQ
/// instead of being retried.
pub fn data<T: DeserializeOwned>(event: &Event) -> Result<T, Failure> {
    serde_json::from_str(&event.data).map_err(|e| {
        Failure::Reject(format!(
            "malformed {} event {}: {e}",
            event.event_type, event.id
        ))
    })
}

/// Serialises `data` (which must serialise to a JSON object) and publishes it
/// as an event of type `event_type`, returning the new event's id.
///
/// The host validates the event while buffering it, so an error here is a
/// property of the event itself and retrying would not help: it becomes a
/// [`Failure::Reject`].
pub fn publish_json<T: Serialize + ?Sized>(event_type: &str, data: &T) -> Result<String, Failure> {
    let json = serde_json::to_string(data)
        .map_err(|e| Failure::Reject(format!("cannot serialise {event_type} event: {e}")))?;
    publish(event_type, &json)
        .map_err(|e| Failure::Reject(format!("cannot publish {event_type} event: {e}")))
}

/// Queues a `POST` of `body` as JSON to `url`, sent by the host only once
/// this event is committed (see [`send_after_commit`]); returns the
/// request's `Idempotency-Key`. A URL no grant names, or a body that does
/// not serialise, will never work: a [`Failure::Reject`].
pub fn post_json_after_commit<T: Serialize + ?Sized>(
    url: &str,
    body: &T,
) -> Result<String, Failure> {
    let body = serde_json::to_string(body)
        .map_err(|e| Failure::Reject(format!("cannot serialise the body for {url}: {e}")))?;
    send_after_commit(&OutgoingRequest {
        method: "POST".into(),
        url: url.into(),
        headers: vec![("content-type".into(), "application/json".into())],
        body: Some(body),
        attempts: None,
    })
    .map_err(|e| Failure::Reject(format!("cannot queue a POST to {url}: {e}")))
}

/// Reads the config value `key` (config values are always strings) and parses
/// it, falling back to `default` when the key is absent.
///
/// A value that is present but does not parse is a deployment mistake, so it
/// becomes a [`Failure::Reject`] naming the key instead of silently using the
/// default.
pub fn config_or<T>(key: &str, default: T) -> Result<T, Failure>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match config_get(key) {
        None => Ok(default),
        Some(raw) => raw
            .trim()
            .parse()
            .map_err(|e| Failure::Reject(format!("config key `{key}` = {raw:?} is invalid: {e}"))),
    }
}

/// Reads the state entry `key` as JSON, `None` if it does not exist.
///
/// State is written by the plugin itself, so an entry that does not parse
/// means a bug or an incompatible upgrade: it becomes a [`Failure::Reject`].
pub fn state_get_json<T: DeserializeOwned>(key: &str) -> Result<Option<T>, Failure> {
    state_get(key)
        .map(|raw| {
            serde_json::from_str(&raw)
                .map_err(|e| Failure::Reject(format!("state entry `{key}` is corrupt: {e}")))
        })
        .transpose()
}

/// Writes `value` as JSON to the state entry `key` (buffered until `handle`
/// returns `Ok`).
pub fn state_set_json<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<(), Failure> {
    let json = serde_json::to_string(value)
        .map_err(|e| Failure::Reject(format!("cannot serialise state entry `{key}`: {e}")))?;
    state_set(key, &json);
    Ok(())
}

/// Adds one to the counter stored under `key` (absent counts as 0) and
/// returns the new value. Counting is the most common use of state, and the
/// read-parse-write dance is easy to get subtly wrong.
pub fn state_increment(key: &str) -> Result<u64, Failure> {
    let current = match state_get(key) {
        None => 0,
        Some(raw) => raw.parse::<u64>().map_err(|e| {
            Failure::Reject(format!(
                "state entry `{key}` = {raw:?} is not a counter: {e}"
            ))
        })?,
    };
    let next = current + 1;
    state_set(key, &next.to_string());
    Ok(next)
}
