//! Plugins: WebAssembly components run in a sandbox.
//!
//! This module knows wasmtime and the WIT contract, and nothing of Redis: it
//! turns an [`Event`](crate::handler::Event) into an
//! [`Outcome`](crate::handler::Outcome) through the [`WasmHandler`].

mod host_api;
mod output;
mod runtime;
mod wasm_handler;

pub use host_api::{DirGrant, Grants};
pub use runtime::{CompiledPlugin, LoadError, PluginFile, PluginRuntime, EPOCH_TICK};
pub use wasm_handler::{Limits, PluginVersion, WasmHandler};
