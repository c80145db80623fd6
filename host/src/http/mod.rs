//! The one HTTP listener (`[http] listen`): `/metrics` for Prometheus,
//! `/healthz` for a supervisor (the process answers), `/readyz` for a load
//! balancer or an orchestrator (Redis reachable, every configured plugin
//! loaded, every loop running; a JSON body saying what is not), and the
//! web [`console`] at `/`.
//!
//! It serves what the daemon tells it through a [`watch`] channel of
//! [`Readiness`], and reads the bus from Redis; it knows nothing else of
//! the daemon. It starts before the plugins are compiled, so a supervisor
//! sees a live but not yet ready host while Python plugins take seconds to
//! compile.

pub mod console;
pub mod listener;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::bus::connection::RedisConn;
use crate::config::{Config, Secret, MIN_TOKEN_CHARS};
use crate::telemetry;

/// How long `/readyz` waits for Redis to answer a PING.
const PING_TIMEOUT: Duration = Duration::from_millis(500);

/// What the daemon says about its readiness, kept current as it runs.
#[derive(Clone)]
pub struct Readiness {
    /// A connection to the bus, once connected.
    pub redis: Option<RedisConn>,
    /// What is not ready, each said for a person (`subscriber pay: its
    /// loop is not running`); empty when all is well.
    pub waiting: Vec<String>,
}

impl Readiness {
    /// Before anything has started.
    pub fn starting() -> Self {
        Readiness {
            redis: None,
            waiting: vec!["plugins are being loaded".into()],
        }
    }
}

/// Everything the listener serves.
#[derive(Clone)]
pub struct Site {
    /// Renders the metrics.
    pub metrics: PrometheusHandle,
    /// The daemon's readiness, kept current by it.
    pub ready: watch::Receiver<Readiness>,
    /// What the console needs to read and steer the bus.
    pub console: console::Console,
}

impl Site {
    /// What the listener serves for `config`, with readiness from `ready`;
    /// installs the metrics recorder (once per process).
    pub fn new(config: &Config, ready: watch::Receiver<Readiness>) -> anyhow::Result<Self> {
        let admin_token = token_of("EVENTHOST_ADMIN_TOKEN", config.http.admin_token.as_ref())?;
        let read_token = token_of("EVENTHOST_READ_TOKEN", config.http.read_token.as_ref())?;
        Ok(Site {
            metrics: telemetry::install_metrics()?,
            ready,
            console: console::Console {
                keys: crate::bus::keys_for(
                    config.redis.endpoint.as_ref(),
                    &config.redis.prefix,
                    config.bus.partitions,
                ),
                subscribers: config.subscribers.iter().map(Into::into).collect(),
                admin_token,
                read_token,
            },
        })
    }
}

/// A token from the environment variable `var` (which wins), else the
/// config's.
fn token_of(var: &str, configured: Option<&Secret>) -> anyhow::Result<Option<String>> {
    match std::env::var(var) {
        Ok(token) if !token.is_empty() => token_from_env(var, token).map(Some),
        _ => Ok(configured.map(|t| t.0.clone())),
    }
}

/// The value of `var` (`EVENTHOST_ADMIN_TOKEN`, `EVENTHOST_READ_TOKEN`),
/// held to the rule of the config's tokens: long enough not to be guessed.
fn token_from_env(var: &str, token: String) -> anyhow::Result<String> {
    let chars = token.chars().count();
    if chars < MIN_TOKEN_CHARS {
        anyhow::bail!(
            "{var} is {chars} characters; a token needs at least {MIN_TOKEN_CHARS}, so that \
             it cannot be guessed: set a longer one (e.g. `openssl rand -hex 16`), or unset it"
        );
    }
    Ok(token)
}

/// Listens on `addr` until `shutdown`; returns the address bound (the port
/// the system chose, for `:0`).
pub async fn serve(
    addr: SocketAddr,
    site: Site,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr}; set [http] listen to a free address, or remove it")
    })?;
    let bound = listener
        .local_addr()
        .context("the listener has no address")?;
    let app = console::routes()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(site);
    tokio::spawn(listener::serve(listener, bound, app, shutdown));
    tracing::info!("HTTP on http://{bound}: the console at /, and /metrics, /healthz, /readyz");
    Ok(bound)
}

async fn metrics_page(State(state): State<Site>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// Alive: the process answers.
async fn healthz() -> Response {
    Json(json!({"alive": true})).into_response()
}

/// Ready: Redis answers, and the daemon says nothing is waiting.
async fn readyz(State(state): State<Site>) -> Response {
    let readiness = state.ready.borrow().clone();
    let mut waiting = readiness.waiting;
    let redis = match readiness.redis {
        None => "not connected yet".to_string(),
        Some(mut conn) => {
            let command = redis::cmd("PING");
            let ping = command.query_async::<String>(&mut conn);
            match tokio::time::timeout(PING_TIMEOUT, ping).await {
                Ok(Ok(_)) => "ok".to_string(),
                Ok(Err(err)) => format!("unreachable: {err}"),
                Err(_) => format!("no answer within {PING_TIMEOUT:?}"),
            }
        }
    };
    if redis != "ok" {
        waiting.insert(0, format!("redis: {redis}"));
    }
    let ready = waiting.is_empty();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"ready": ready, "redis": redis, "waiting": waiting})),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_from_the_environment_is_held_to_the_config_rule() {
        let var = "EVENTHOST_ADMIN_TOKEN";
        let short = token_from_env(var, "a".into()).unwrap_err().to_string();
        assert!(
            short.contains("EVENTHOST_ADMIN_TOKEN is 1 characters; a token needs at least 16"),
            "{short}"
        );
        let fifteen = "é".repeat(MIN_TOKEN_CHARS - 1);
        assert!(
            token_from_env(var, fifteen).is_err(),
            "counted in characters"
        );
        let enough = "x".repeat(MIN_TOKEN_CHARS);
        assert_eq!(token_from_env(var, enough.clone()).unwrap(), enough);
    }
}
