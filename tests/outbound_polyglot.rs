//! Outbound HTTP from Python and JavaScript plugins (`plugins/python-fetch`
//! with the Python SDK's `http`, `plugins/js-fetch` with `fetch`), built
//! by `eventhost build`, against a real HTTP server on loopback: a request
//! its grants name reaches the server with an `Idempotency-Key` and its
//! answer is committed; an ungranted one is refused before it leaves, and
//! the plugin is told (committed, or in the DLQ reason when the error
//! escapes the handler). `invoke --grant-http` lists a Python plugin's
//! request.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use support::http_server::HttpServer;
use support::*;

/// Python and JavaScript components compile for 10–40 s the first time.
const START: Duration = Duration::from_secs(180);
const WAIT: Duration = Duration::from_secs(30);

/// The language's fetch plugin, built by `eventhost build`, and the name
/// it is installed as.
fn fetch_plugin(lang: &str) -> (PathBuf, String) {
    let project = format!("plugins/{lang}-fetch");
    (built_with_eventhost(&project), format!("{lang}_fetch.wasm"))
}

/// The state key the plugin committed for event `id`: `status`, `body` or
/// `error`, waited for until one of `status` and `error` is there.
fn recorded(conn: &mut redis::Connection, id: &str) -> std::collections::HashMap<String, String> {
    let mut st = Default::default();
    eventually("the plugin commits what it learned", WAIT, || {
        st = state(conn, "fetcher");
        st.contains_key(&format!("status:{id}")) || st.contains_key(&format!("error:{id}"))
    });
    st
}

/// One language's plugin against a granted server and an ungranted one:
/// the granted POST is sent with its body and an idempotency key and its
/// answer committed; the ungranted GET never leaves, and the plugin
/// commits the refusal (`refusal` in its error) or, when the error escapes
/// the handler, the DLQ reason carries it.
fn granted_and_refused(lang: &str, refusal: &str) {
    let server = HttpServer::start();
    let other = HttpServer::start();
    let (built, name) = fetch_plugin(lang);
    let world = World::new(&[], "");
    world.install_file(&built, &name);
    world.configure(&format!(
        "[subscribers.fetcher]\nplugin = \"{name}\"\nevents = [\"Fetch\"]\n\
         [subscribers.fetcher.grants]\nhttp = [\"http://127.0.0.1:{}\"]\n",
        server.port
    ));
    let host = world.host_within(START);
    let mut conn = world.conn();

    let url = format!("http://127.0.0.1:{}/charge?order=o-1", server.port);
    let sent = publish(
        &mut conn,
        "Fetch",
        json!({"url": url, "body": format!("amount=100&lang={lang}")}),
    );
    let st = recorded(&mut conn, &sent);
    assert_eq!(
        st.get(&format!("status:{sent}")).map(String::as_str),
        Some("200"),
        "{lang}: {st:?}"
    );
    assert_eq!(
        st[&format!("body:{sent}")],
        format!("hello /charge?order=o-1 amount=100&lang={lang}"),
        "{lang}: the answer reached the handler and was committed"
    );
    let seen = server.seen();
    assert_eq!(seen.len(), 1, "{lang}: {seen:?}");
    assert_eq!(seen[0].line, "POST /charge?order=o-1 HTTP/1.1", "{lang}");
    assert_eq!(seen[0].host, format!("127.0.0.1:{}", server.port), "{lang}");
    assert_eq!(seen[0].body, format!("amount=100&lang={lang}"), "{lang}");
    assert_eq!(
        seen[0].key.len(),
        36,
        "{lang}: the host added an Idempotency-Key: {seen:?}"
    );

    // Another port of the same address: no grant names it. A GET, and
    // POSTs whose bodies the plugin writes while the host refuses them
    // (which made StarlingMonkey abort now and then before the host read
    // a refused body: a few, to catch it).
    let ungranted = format!("http://127.0.0.1:{}/", other.port);
    let mut refused = vec![publish(&mut conn, "Fetch", json!({"url": ungranted}))];
    for n in 0..3 {
        let body = format!("{n}").repeat(50_000);
        refused.push(publish(
            &mut conn,
            "Fetch",
            json!({"url": ungranted, "body": body}),
        ));
    }
    for caught in &refused {
        let st = recorded(&mut conn, caught);
        let error = st
            .get(&format!("error:{caught}"))
            .unwrap_or_else(|| panic!("{lang}: the request was refused: {st:?}"));
        assert!(error.contains(refusal), "{lang}: {error}");
    }
    let escaped = publish(
        &mut conn,
        "Fetch",
        json!({"url": ungranted, "strict": true}),
    );
    eventually("the escaped refusal is dead-lettered", WAIT, || {
        len(&mut conn, "events:sub:fetcher:dlq") == 1
    });
    let reasons = dlq_reasons(&mut conn, "events:sub:fetcher:dlq");
    assert!(
        reasons[0].contains(refusal),
        "{lang}: the DLQ reason says why: {reasons:?}"
    );
    // Whatever the plugin made of it, the host says which request it
    // denied and why.
    let note = format!(
        "(the host denied a request of this call: GET {ungranted}: HttpRequestDenied: \
         no grant of this subscriber names http://127.0.0.1:{}",
        other.port
    );
    assert!(reasons[0].contains(&note), "{lang}: {reasons:?}");
    assert!(
        !state(&mut conn, "fetcher").contains_key(&format!("error:{escaped}")),
        "{lang}: a trapped call commits nothing"
    );
    assert!(other.seen().is_empty(), "{lang}: nothing reached the other");
    assert_eq!(server.seen().len(), 1, "{lang}");
    let log = host.log();
    assert!(
        log.contains(&format!(
            "outbound request denied: no grant of this subscriber names http://127.0.0.1:{}",
            other.port
        )),
        "{lang}: the host's log says what was denied and why: {log}"
    );
    host.stop();
}

#[test]
fn a_python_plugin_reaches_a_granted_server_and_is_refused_another() {
    // The SDK's HttpError carries the wasi:http error code.
    granted_and_refused("python", "HttpRequestDenied");
}

#[test]
fn a_javascript_plugin_reaches_a_granted_server_and_is_refused_another() {
    // fetch rejects with a TypeError that does not say why (StarlingMonkey
    // keeps the wasi:http error code to itself); the host's log and the DLQ
    // reason do.
    granted_and_refused(
        "js",
        "TypeError: NetworkError when attempting to fetch resource",
    );
}

/// `invoke --grant-http` runs a Python plugin's request against the
/// granted server and lists it; a URL it does not grant is listed as
/// denied and never reaches a server.
#[test]
fn invoke_lists_a_python_plugins_requests() {
    let server = HttpServer::start();
    let (built, _) = fetch_plugin("python");
    let grant = format!("http://127.0.0.1:{}", server.port);
    let invoke = |url: &str| -> Value {
        let out = std::process::Command::new(eventhost_bin())
            .arg("invoke")
            .arg(&built)
            .args(["--type", "Fetch", "--data"])
            .arg(json!({ "url": url }).to_string())
            .args(["--grant-http", &grant, "--json"])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let report = invoke(&format!("{grant}/ping"));
    let requests = report["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 1, "{report}");
    assert_eq!(requests[0]["method"], "GET", "{report}");
    assert_eq!(requests[0]["url"], format!("{grant}/ping"), "{report}");
    assert_eq!(requests[0]["status"], 200, "{report}");
    let set = report["state"]["set"].as_object().unwrap();
    assert!(
        set.values().any(|v| v == "hello /ping "),
        "the answer reached the handler: {report}"
    );
    assert_eq!(server.seen().len(), 1);

    let elsewhere = format!("http://127.0.0.1:{}/", free_port());
    let report = invoke(&elsewhere);
    assert_eq!(
        report["requests"][0]["error"], "HttpRequestDenied",
        "{report}"
    );
    assert!(report["requests"][0]["status"].is_null(), "{report}");
    assert_eq!(server.seen().len(), 1, "nothing more reached the server");
}
