//! The orders example end to end: its four services (order and payment in
//! Rust, shipping in Python, notification in JavaScript) as the real
//! plugins, configured as in
//! `examples/orders/eventhost.toml`, run by the real binary against a real
//! `redis-server`; the assertions are on what ends up in Redis.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

const SERVICES: [&str; 4] = [
    "order-service",
    "payment-service",
    "shipping-service",
    "notification-service",
];
const PLUGINS: [&str; 4] = [
    "order_service.wasm",
    "payment_service.wasm",
    "shipping_service.wasm",
    "notification_service.wasm",
];
/// The services built by cargo with the other plugins; the rest are built
/// by `eventhost build` from these projects, in the order of `PLUGINS`.
const RUST_PLUGINS: usize = 2;
const OTHER_PROJECTS: [&str; 2] = [
    "examples/orders/services/shipping",
    "examples/orders/services/notification",
];
const ORDERS: usize = 200;

/// A world with the example's four services installed and `subscribers`
/// as its config.
fn example_world(subscribers: &str) -> World {
    let world = World::new(&PLUGINS[..RUST_PLUGINS], subscribers);
    for (project, name) in OTHER_PROJECTS.iter().zip(&PLUGINS[RUST_PLUGINS..]) {
        world.install_file(&built_with_eventhost(project), name);
    }
    world
}

/// The example's config file, as shipped.
fn example_config() -> String {
    let path = root().join("examples/orders/eventhost.toml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The example's `[subscribers.*]` tables: everything from the first one on
/// (its header names a private Redis; the tests use the world's own).
fn example_subscribers() -> String {
    let text = example_config();
    let start = text
        .find("\n[subscribers.")
        .expect("the example config has [subscribers.*] tables");
    text[start + 1..].to_string()
}

/// The provider's bad days, as `run.sh` starts it: the share of orders
/// whose card is declined, and the next share that times out once.
const DECLINE_PERCENT: u64 = 10;
const TIMEOUT_PERCENT: u64 = 20;

/// One of the example's servers (`examples/orders/servers/`), a real HTTP
/// server on a free port, stopped on drop.
struct ExampleServer {
    child: std::process::Child,
    addr: String,
    /// The address the example's config grants it.
    shipped: &'static str,
}

impl ExampleServer {
    fn start(script: &str, shipped: &'static str, args: &[String]) -> ExampleServer {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new("python3")
            .arg(root().join("examples/orders/servers").join(script))
            .args(["--port", "0"])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs the example's servers");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("{script} said {line:?}"))
            .to_string();
        ExampleServer {
            child,
            addr,
            shipped,
        }
    }

    /// The payment provider, with the bad days `run.sh` gives it.
    fn provider() -> ExampleServer {
        let args = [
            "--decline-percent".to_string(),
            DECLINE_PERCENT.to_string(),
            "--timeout-percent".to_string(),
            TIMEOUT_PERCENT.to_string(),
        ];
        ExampleServer::start("payment_provider.py", "127.0.0.1:8471", &args)
    }

    /// The receiver of the notification service's webhooks.
    fn receiver() -> ExampleServer {
        ExampleServer::start("webhook_receiver.py", "127.0.0.1:8472", &[])
    }

    /// What it saw, from `GET /stats`.
    fn stats(&self) -> Value {
        let (code, body) = http_get(&self.addr, "/stats");
        assert_eq!(code, 200, "{body}");
        parse(&body)
    }

    /// `config` with this server's address where the example grants its
    /// port.
    fn in_place(&self, config: &str) -> String {
        assert!(
            config.contains(self.shipped),
            "the example grants {}",
            self.shipped
        );
        config.replace(self.shipped, &self.addr)
    }
}

impl Drop for ExampleServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// 64-bit FNV-1a, the payment provider's stable hash.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What the payment provider decides for an order, by the same rule: the
/// order id hashes to a bucket in 0..100; the first `decline` buckets are
/// declined, the next `flaky` time out on the first attempt only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Declined,
    Flaky,
    Paid,
}

fn fate(order_id: &str, decline: u64, flaky: u64) -> Fate {
    let bucket = fnv1a(order_id.as_bytes()) % 100;
    if bucket < decline {
        Fate::Declined
    } else if bucket < decline + flaky {
        Fate::Flaky
    } else {
        Fate::Paid
    }
}

fn order_id(n: usize) -> String {
    format!("order-{n:06}")
}

/// A `CreateOrderCommand` as a user would publish it.
fn command(n: usize) -> Value {
    let mut items =
        vec![json!({"product_id": "prod-1", "name": "Laptop", "price": 1299.99, "quantity": 1})];
    if n.is_multiple_of(2) {
        items.push(json!({"product_id": "prod-2", "name": "Mouse", "price": 29.99, "quantity": 2}));
    }
    json!({"order_id": order_id(n), "user_id": format!("user-{}", n % 7), "items": items})
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// One line on where the flow stands, for timeouts.
fn progress(conn: &mut redis::Connection) -> String {
    let notified = state(conn, "notification-service");
    let orders = state(conn, "order-service");
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    for order in orders.values() {
        let status = parse(order)["status"].as_str().unwrap_or("?").to_string();
        *statuses.entry(status).or_default() += 1;
    }
    format!(
        "orders by status {statuses:?}, payment DLQ {}, notified {:?}, streams {:?}",
        len(conn, "events:sub:payment-service:dlq"),
        notified,
        SERVICES
            .iter()
            .map(|s| (s, len(conn, &format!("events:sub:{s}"))))
            .collect::<Vec<_>>()
    )
}

#[test]
fn every_order_ends_shipped_or_declined_and_every_service_agrees() {
    let (decline, flaky) = (DECLINE_PERCENT, TIMEOUT_PERCENT);
    let fates: BTreeMap<String, Fate> = (1..=ORDERS)
        .map(|n| (order_id(n), fate(&order_id(n), decline, flaky)))
        .collect();
    let ids_with = |wanted: Fate| -> BTreeSet<String> {
        fates
            .iter()
            .filter(|(_, f)| **f == wanted)
            .map(|(id, _)| id.clone())
            .collect()
    };
    let declined = ids_with(Fate::Declined);
    let flaky_ids = ids_with(Fate::Flaky);
    let shipped: BTreeSet<String> = fates
        .iter()
        .filter(|(_, f)| **f != Fate::Declined)
        .map(|(id, _)| id.clone())
        .collect();
    assert!(
        !declined.is_empty() && !flaky_ids.is_empty(),
        "these ids exercise both failure paths ({} declined, {} flaky)",
        declined.len(),
        flaky_ids.len()
    );
    let (n, s) = (ORDERS, shipped.len());

    let provider = ExampleServer::provider();
    let receiver = ExampleServer::receiver();
    let world = example_world(&receiver.in_place(&provider.in_place(&example_subscribers())));
    let host = world.host_within(Duration::from_secs(300));
    let mut conn = world.conn();
    let started = Instant::now();
    for i in 1..=ORDERS {
        publish(&mut conn, "CreateOrderCommand", command(i));
    }

    // The end state the services' rules call for; then the details.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let orders = state(&mut conn, "order-service");
        let shipped_now = orders
            .values()
            .filter(|o| parse(o)["status"] == "shipped")
            .count();
        let notified = state(&mut conn, "notification-service");
        if orders.len() == n
            && shipped_now == s
            && len(&mut conn, "events:sub:payment-service:dlq") == declined.len()
            && notified.get("notified").map(String::as_str) == Some(&(n + 2 * s).to_string())
            && settled(&mut conn, &SERVICES)
            && receiver.stats()["keys"] == n + 2 * s
        {
            break;
        }
        if Instant::now() > deadline {
            panic!(
                "the orders did not settle within 60 s: expected {n} orders, {s} shipped, {} declined; {}",
                declined.len(),
                progress(&mut conn)
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    eprintln!(
        "{n} orders settled in {:?}: {s} shipped, {} declined, {} paid after a retry",
        started.elapsed(),
        declined.len(),
        flaky_ids.len()
    );

    // Orders: shipped with their payment and shipment, or still `created`.
    let orders = state(&mut conn, "order-service");
    let payments = state(&mut conn, "payment-service");
    let shipments = state(&mut conn, "shipping-service");
    assert_eq!(orders.len(), n, "one order per command");
    for (id, fate) in &fates {
        let order = parse(&orders[&format!("order:{id}")]);
        assert_eq!(order["order_id"], id.as_str());
        if *fate == Fate::Declined {
            assert_eq!(order["status"], "created", "{id} was declined: {order}");
            assert!(order.get("payment_id").is_none(), "{order}");
            assert!(!payments.contains_key(&format!("payment:{id}")), "{id}");
            assert!(!shipments.contains_key(&format!("shipment:{id}")), "{id}");
            continue;
        }
        assert_eq!(order["status"], "shipped", "{id} ({fate:?}): {order}");
        let payment = parse(&payments[&format!("payment:{id}")]);
        let shipment = parse(&shipments[&format!("shipment:{id}")]);
        assert_eq!(payment["status"], "succeeded");
        assert_eq!(payment["amount"], order["total"], "{id}");
        assert_eq!(order["payment_id"], payment["payment_id"], "{id}");
        assert_eq!(
            order["tracking_number"], shipment["tracking_number"],
            "{id}"
        );
        assert_eq!(order["carrier"], shipment["carrier"], "{id}");
    }
    // Payment and shipping state exist exactly for the shipped orders.
    let keys = |state: &HashMap<String, String>, prefix: &str| -> BTreeSet<String> {
        state
            .keys()
            .map(|k| {
                k.strip_prefix(prefix)
                    .unwrap_or_else(|| panic!("unexpected state key {k}"))
                    .to_string()
            })
            .collect()
    };
    assert_eq!(keys(&payments, "payment:"), shipped);
    assert_eq!(keys(&shipments, "shipment:"), shipped);

    // The payment DLQ holds exactly the declined orders' OrderCreatedEvents,
    // each rejected once with the reason.
    let dead = data_of(&mut conn, "events:sub:payment-service:dlq");
    let mut dead_ids = BTreeSet::new();
    for entry in &dead {
        let id = entry["order_id"].as_str().unwrap().to_string();
        assert_eq!(entry["event_type"], "OrderCreatedEvent", "{entry}");
        let failures = entry["_failures"].as_array().unwrap();
        assert_eq!(failures.len(), 1, "{entry}");
        assert_eq!(failures[0]["kind"], "reject");
        assert_eq!(failures[0]["subscriber"], "payment-service");
        let reason = failures[0]["reason"].as_str().unwrap();
        assert!(
            reason.starts_with(&format!(
                "payment-service: rejected: card declined for order {id} (amount "
            )) && reason.ends_with("the card was declined (card_declined)"),
            "{reason}"
        );
        assert!(dead_ids.insert(id), "dead-lettered twice: {entry}");
    }
    assert_eq!(dead_ids, declined, "the DLQ holds the declined orders");
    assert_eq!(shipped.len() + dead_ids.len(), n);

    // Flaky payments failed once with `retry` and were paid on attempt 2.
    let log = host.log();
    for id in &flaky_ids {
        let line = format!("payment provider timed out for order {id}; attempt 2 of 3");
        assert_eq!(log.matches(&line).count(), 1, "{line:?} in the host log");
    }
    assert_eq!(
        log.matches("payment provider timed out").count(),
        flaky_ids.len(),
        "only flaky payments were retried, each once"
    );
    assert!(!log.contains("retry exhausted"));

    // The provider charged each paid order once, under one key per order,
    // though every flaky order's charge was sent twice.
    let stats = provider.stats();
    let expect = json!({
        "requests": n + flaky_ids.len(),
        "charges": s,
        "declined": declined.len(),
        "timeouts": flaky_ids.len(),
        "replayed": 0,
        "rejected": 0,
        "keys": n,
        "double_charged": 0,
    });
    assert_eq!(stats, expect, "what the provider saw");

    // One webhook per notification, each with a key of its own, sent once
    // its event was committed (a repeat would carry a key seen before).
    let got = receiver.stats();
    assert_eq!(got["keys"], n + 2 * s, "{got}");
    assert_eq!(got["without_key"], 0, "{got}");
    assert_eq!(
        got["by_type"],
        json!({"OrderCreatedEvent": n, "PaymentProcessedEvent": s, "OrderShippedEvent": s}),
        "{got}"
    );

    // Notifications: one per created order, payment and shipment.
    let notified = state(&mut conn, "notification-service");
    let count = |key: &str| notified.get(key).map_or(0, |v| v.parse::<usize>().unwrap());
    assert_eq!(count("notified:OrderCreatedEvent"), n);
    assert_eq!(count("notified:PaymentProcessedEvent"), s);
    assert_eq!(count("notified:OrderShippedEvent"), s);
    assert_eq!(count("notified"), n + 2 * s);
    assert_eq!(notified.len(), 4, "nothing else is counted: {notified:?}");

    // Every event went exactly where its type is subscribed, once.
    let all = data_of(&mut conn, "events:all");
    let by_type = |t: &str| all.iter().filter(|d| d["event_type"] == t).count();
    assert_eq!(by_type("CreateOrderCommand"), n);
    assert_eq!(by_type("OrderCreatedEvent"), n);
    assert_eq!(by_type("PaymentProcessedEvent"), s);
    assert_eq!(by_type("OrderShippedEvent"), s);
    assert_eq!(all.len(), 2 * n + 2 * s);
    let created: BTreeSet<&str> = all
        .iter()
        .filter(|d| d["event_type"] == "OrderCreatedEvent")
        .map(|d| d["order_id"].as_str().unwrap())
        .collect();
    assert_eq!(created.len(), n, "one OrderCreatedEvent per order");
    assert_eq!(len(&mut conn, "events:sub:order-service"), n + 2 * s);
    // A retry comes back from the schedule as a new entry of the stream.
    assert_eq!(
        len(&mut conn, "events:sub:payment-service"),
        n + flaky_ids.len()
    );
    assert_eq!(len(&mut conn, "events:sub:shipping-service"), s);
    assert_eq!(len(&mut conn, "events:sub:notification-service"), all.len());

    // Nothing else failed, nothing is left pending.
    for dlq in [
        "events:all:dlq",
        "events:sub:order-service:dlq",
        "events:sub:shipping-service:dlq",
        "events:sub:notification-service:dlq",
    ] {
        assert_eq!(
            len(&mut conn, dlq),
            0,
            "{dlq}: {:#?}",
            data_of(&mut conn, dlq)
        );
    }
    assert!(settled(&mut conn, &SERVICES));
    assert_eq!(host.stop().code(), Some(0));
}

#[test]
fn the_examples_config_passes_check() {
    let world = example_world("");
    // As shipped: no [redis] url, plugins in `plugins` beside it.
    world.write_config(&example_config());
    let out = world.eventhost(&["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (service, plugin) in SERVICES.iter().zip(PLUGINS) {
        assert!(
            stdout.contains(&format!("ok: subscribers.{service}: {plugin}")),
            "{stdout}"
        );
    }
    assert!(stdout.contains("ok, 4 subscribers"), "{stdout}");
}
