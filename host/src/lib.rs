//! eventhost: an event bus on Redis Streams whose subscribers are sandboxed
//! WebAssembly components.
//!
//! Data flows one way. [`config`] turns the TOML into typed settings; the
//! [`preflight`] checks the files they name and loads the plugins; the
//! [`daemon`] wires the rest: the [`bus`] reads events from Redis and hands
//! each to a [`handler::Handler`], which the [`plugin`] module provides for
//! wasm components; the bus commits, retries or dead-letters what the
//! handler returns. [`schedule`] says when a schedule ticks; the bus
//! publishes its ticks. [`reload`] applies changes on disk while it runs;
//! [`invoke`] runs one event through a plugin without any of it, and
//! [`author`] writes and builds plugin projects for it.
//! Around them: [`cli`] (the binary's commands), [`http`] (metrics,
//! health and readiness), [`signals`], [`telemetry`], [`private_redis`]
//! (a server of our own when none is configured), [`ownership`] (whether
//! what we load or run from disk is ours alone) and [`backoff`].

pub mod author;
pub mod backoff;
pub mod bus;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod handler;
pub mod http;
pub mod invoke;
pub mod outbound;
pub mod ownership;
pub mod plugin;
pub mod preflight;
pub mod private_redis;
pub mod reload;
pub mod schedule;
pub mod signals;
pub mod subscribers;
pub mod telemetry;
