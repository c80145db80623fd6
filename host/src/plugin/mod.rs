//! Plugins: WebAssembly components run in a sandbox.
//!
//! This module knows wasmtime and the WIT contract, and nothing of Redis: it
//! turns an [`Event`](crate::handler::Event) into an
//! [`Outcome`](crate::handler::Outcome) through the [`WasmHandler`].
//!
//! - [`runtime`]: the engine, compiling and validating components;
//! - [`compiler`]: compiling in a child process with limits of time and
//!   memory, after [`exports`] has read that the component exports a
//!   `handle` at all;
//! - [`engine`]: the engine's settings, shared by both;
//! - [`cache`]: the compiled cache, trusted only as far as it is proven;
//! - [`wasm_handler`]: running one subscriber's events in reused instances,
//!   swapped atomically on reload;
//! - [`threads`]: each subscriber's calls on threads of their own, below
//!   the bus's CPU priority;
//! - [`failure`]: what a failed call is reported as, with the plugin's own
//!   last words;
//! - [`host_api`]: what a plugin's imports do (log, publish, state, config);
//! - [`world_v2`]: the 0.2.0 world, linked beside 0.1.0's, and its
//!   `send-after-commit`;
//! - [`world_v3`]: the 0.3.0 world, linked beside both, and its
//!   `publish-later` and `retry-after`;
//! - [`capacity`]: the instance pool, shared fairly between subscribers;
//! - [`files`]: the host's file descriptors a plugin may hold;
//! - [`limiter`] and [`output`]: an instance's memory budget and the tail of
//!   what it printed;
//! - [`logs`]: what a plugin writes to the host's log, escaped, bounded and
//!   rate-limited.

mod cache;
mod capacity;
mod compiler;
mod engine;
mod exports;
mod failure;
mod files;
mod host_api;
mod limiter;
mod logs;
mod output;
mod runtime;
mod threads;
mod wasm_handler;
mod world_v2;
mod world_v3;

pub use compiler::{serve_child as serve_compile_child, SUBCOMMAND as COMPILE_SUBCOMMAND};
pub use runtime::{
    check_plugin_file, CompiledPlugin, LoadError, PluginFile, PluginRuntime, RuntimeSettings,
};
pub use wasm_handler::{Limits, WasmHandler};
