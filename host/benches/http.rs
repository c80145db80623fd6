//! What a direct HTTP request from a plugin costs, against the same request
//! from native Rust, to the same local server.
//!
//!     cargo bench -p eventhost --bench http             # 4,000 requests each
//!     cargo bench -p eventhost --bench http -- 20000    # more
//!
//! The plugin is `plugins/fetch` (a `waki` client over `wasi:http`), run by
//! the host's own [`WasmHandler`] with a grant for the server, 16 calls at a
//! time, each a whole call: an instance, the event in, one GET, the state
//! write out. Native Rust makes the same GET with hyper, 16 at a time, one
//! connection per request like the host's client (which keeps none open
//! between calls), and once more over 16 kept-alive connections, the best a
//! native client could do. The server is an axum app on 127.0.0.1 on its own
//! runtime. Figures, not assertions: see BENCHMARKS.md.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use eventhost::config::{EventFilter, Grants, PublishLimits, SubscriberConfig};
use eventhost::handler::{Event, Handler, Outcome, Seen, StateReader};
use eventhost::outbound::HttpGrant;
use eventhost::plugin::{PluginRuntime, RuntimeSettings, WasmHandler};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;

const CONCURRENCY: usize = 16;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let requests: usize = std::env::args()
        .filter_map(|a| a.parse().ok())
        .next()
        .unwrap_or(4_000);
    let addr = serve();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "direct HTTP requests to a local server, {requests} each, {CONCURRENCY} at a time, {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("| client | requests/s | p50 ms | p99 ms |\n| --- | --- | --- | --- |");
    let native = runtime.block_on(native_client(addr, requests, false));
    native.print("native Rust (hyper), a connection per request");
    let pooled = runtime.block_on(native_client(addr, requests, true));
    pooled.print("native Rust (hyper), 16 kept-alive connections");
    let wasm = runtime.block_on(plugin(addr, requests));
    wasm.print("plugin (waki over wasi:http), a whole call each");
    println!(
        "plugin / native (a connection per request): {:.2}x the p50, {:.2}x the p99, {:.2} of the rate",
        wasm.p50 / native.p50,
        wasm.p99 / native.p99,
        wasm.rate / native.rate
    );
}

/// Requests/s and latency of one client.
struct Run {
    rate: f64,
    p50: f64,
    p99: f64,
}

impl Run {
    fn of(mut latencies: Vec<Duration>, took: Duration) -> Run {
        latencies.sort();
        let at =
            |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
        Run {
            rate: latencies.len() as f64 / took.as_secs_f64(),
            p50: at(0.50).as_secs_f64() * 1e3,
            p99: at(0.99).as_secs_f64() * 1e3,
        }
    }

    fn print(&self, client: &str) {
        println!(
            "| {client} | {:.0} | {:.3} | {:.3} |",
            self.rate, self.p50, self.p99
        );
    }
}

/// The server: `GET /` answers a short body; on a runtime of its own.
fn serve() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    addr
}

/// `requests` GETs split over [`CONCURRENCY`] tasks, each timed.
async fn timed<F, Fut>(requests: usize, one: F) -> Run
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let started = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|task| {
            let one = one.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                for n in (task..requests).step_by(CONCURRENCY) {
                    let at = Instant::now();
                    one(n).await;
                    latencies.push(at.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(requests);
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    Run::of(latencies, started.elapsed())
}

async fn native_client(addr: SocketAddr, requests: usize, keep_alive: bool) -> Run {
    type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;
    async fn connect(addr: SocketAddr) -> Sender {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let io = hyper_util::rt::TokioIo::new(stream);
        let (sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        sender
    }
    async fn get(sender: &mut Sender, addr: SocketAddr) {
        let request = http::Request::get("/")
            .header(http::header::HOST, addr.to_string())
            .body(Empty::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap();
    }
    let pool: Arc<Vec<tokio::sync::Mutex<Sender>>> = Arc::new(if keep_alive {
        let mut senders = Vec::new();
        for _ in 0..CONCURRENCY {
            senders.push(tokio::sync::Mutex::new(connect(addr).await));
        }
        senders
    } else {
        Vec::new()
    });
    timed(requests, move |n| {
        let pool = pool.clone();
        async move {
            if pool.is_empty() {
                get(&mut connect(addr).await, addr).await;
            } else {
                get(&mut *pool[n % CONCURRENCY].lock().await, addr).await;
            }
        }
    })
    .await
}

/// No committed state: the fetch plugin only writes.
struct NoState;

#[async_trait]
impl StateReader for NoState {
    async fn read(&self, _key: &str) -> anyhow::Result<Seen> {
        Ok(Seen::value(None))
    }
}

async fn plugin(addr: SocketAddr, requests: usize) -> Run {
    let component = support::plugins().join("fetch.wasm");
    let cache = tempfile::tempdir().unwrap();
    let runtime = PluginRuntime::new(RuntimeSettings::with_cache(cache.path())).unwrap();
    let plugin = Arc::new(runtime.load(&component).unwrap());
    let settings = SubscriberConfig {
        name: "fetch".into(),
        plugin_file: "fetch.wasm".into(),
        plugin: component.clone(),
        events: EventFilter::All,
        concurrency: CONCURRENCY,
        max_attempts: 1,
        timeout: Duration::from_secs(5),
        memory_bytes: 32 << 20,
        effects_bytes: 1 << 20,
        publish: PublishLimits::default(),
        retry: eventhost::config::RetryPolicy::default(),
        order: None,
        config: BTreeMap::new(),
        grants: Grants {
            http: vec![HttpGrant::parse(&format!("http://{addr}")).unwrap()],
            ..Grants::default()
        },
    };
    let handler = Arc::new(WasmHandler::new(runtime, &settings, plugin));
    let data = serde_json::json!({"url": format!("http://{addr}/")}).to_string();
    let state: Arc<dyn StateReader> = Arc::new(NoState);
    timed(requests, move |n| {
        let (handler, state, data) = (handler.clone(), state.clone(), data.clone());
        async move {
            let event = Event {
                id: format!("event-{n}"),
                event_type: "Fetch".into(),
                stream_id: format!("1-{n}"),
                timestamp: None,
                attempt: 1,
                data,
                hops: 0,
                traceparent: None,
            };
            // The plugin records what came back: a 200 and the body, or
            // the error, which must not be measured as a request.
            match handler.handle(event, state).await {
                Outcome::Ok(effects) => {
                    let status = format!("status:event-{n}");
                    let ok = effects
                        .writes()
                        .iter()
                        .any(|(k, v)| *k == status && v.as_deref() == Some("200"));
                    assert!(ok, "no 200: {:?}", effects.writes());
                }
                Outcome::Failed(failure) => panic!("the call failed: {}", failure.message),
            }
        }
    })
    .await
}
