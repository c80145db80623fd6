//! eventhost: an event bus on Redis Streams whose subscribers are sandboxed
//! WebAssembly components.
//!
//! Data flows one way: [`config`] is parsed at the edge into typed settings;
//! the [`bus`] reads events from Redis and hands each to a
//! [`handler::Handler`]; the [`plugin`] module provides the wasm handler; the
//! bus commits, retries or dead-letters what the handler returns. The
//! [`daemon`] wires them together for `eventhost run`.

pub mod bus;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod handler;
pub mod plugin;
pub mod reload;
pub mod shutdown;
pub mod telemetry;
