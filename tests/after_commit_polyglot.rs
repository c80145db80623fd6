//! Requests sent only after the commit from Python and JavaScript plugins
//! (the queue mode of `plugins/python-fetch` with the Python SDK's
//! `post_json_after_commit`, `plugins/js-fetch` with the JS SDK's
//! `postJsonAfterCommit`), built by `eventhost build` against
//! `eventhost:plugin@0.2.0`, under the real host with a real receiver on
//! loopback: a handler that queues and succeeds has its request sent once,
//! with the `Idempotency-Key` the call returned; one that queues and then
//! fails sends nothing; an ungranted URL is refused to the plugin and never
//! leaves.

mod support;

use std::time::Duration;

use serde_json::json;
use support::receiver::Receiver;
use support::*;

/// Python and JavaScript components compile for 10–40 s the first time.
const START: Duration = Duration::from_secs(180);
const WAIT: Duration = Duration::from_secs(30);

/// One language's fetch plugin as subscriber `queuer` (on `Queue`),
/// granted only the receiver's port: a committed event's request arrives
/// once with its key, a failed one's never, an ungranted one is refused.
fn queued_after_commit(lang: &str) {
    let receiver = Receiver::start();
    let other = Receiver::start();
    let built = built_with_eventhost(&format!("plugins/{lang}-fetch"));
    let name = format!("{lang}_fetch.wasm");
    let world = World::new(&[], "");
    world.install_file(&built, &name);
    world.configure(&format!(
        "[subscribers.queuer]\nplugin = \"{name}\"\nevents = [\"Queue\"]\n\
         [subscribers.queuer.grants]\nhttp = [\"http://127.0.0.1:{}\"]\n",
        receiver.port
    ));
    let host = world.host_within(START);
    let mut conn = world.conn();
    let url = format!("http://127.0.0.1:{}/hooks", receiver.port);

    let failed = publish(&mut conn, "Queue", json!({"queue": url, "fail": true}));
    let ok = publish(&mut conn, "Queue", json!({"queue": url}));
    let ungranted = format!("http://127.0.0.1:{}/hooks", other.port);
    let denied = publish(&mut conn, "Queue", json!({"queue": ungranted}));

    eventually("the committed request arrives", WAIT, || {
        !receiver.got().is_empty()
    });
    eventually("the failed event is dead-lettered", WAIT, || {
        len(&mut conn, "events:sub:queuer:dlq") == 1
    });
    eventually("the refusal is committed", WAIT, || {
        state(&mut conn, "queuer").contains_key(&format!("error:{denied}"))
    });
    // What a sender would send late (a second copy, the failed event's
    // request) has had time to arrive.
    std::thread::sleep(Duration::from_secs(1));

    let got = receiver.got();
    assert_eq!(
        got.len(),
        1,
        "{lang}: once, and nothing of the failed call: {got:?}"
    );
    assert_eq!(got[0].path, "/hooks", "{lang}");
    assert_eq!(
        got[0].body,
        json!({"event": ok, "n": 0, "lang": lang}),
        "{lang}"
    );
    let st = state(&mut conn, "queuer");
    assert_eq!(
        st.get(&format!("key:{ok}")),
        Some(&got[0].key),
        "{lang}: it carries the key the call returned: {st:?}"
    );
    assert!(!got[0].key.is_empty(), "{lang}");
    assert!(
        !st.contains_key(&format!("key:{failed}")),
        "{lang}: a failed call commits nothing: {st:?}"
    );
    let reasons = dlq_reasons(&mut conn, "events:sub:queuer:dlq");
    assert!(
        reasons[0].contains("asked to fail after queueing"),
        "{lang}: {reasons:?}"
    );

    let refusal = &st[&format!("error:{denied}")];
    assert!(
        refusal.contains(&format!("cannot queue POST {ungranted}: HttpRequestDenied")),
        "{lang}: the plugin sees why: {refusal}"
    );
    assert!(
        other.got().is_empty(),
        "{lang}: a refused request never leaves"
    );
    assert_eq!(
        len(&mut conn, "events:sub:queuer:http"),
        0,
        "{lang}: sent, then deleted"
    );
    host.stop();
}

#[test]
fn a_python_plugin_queues_requests_sent_only_after_the_commit() {
    queued_after_commit("python");
}

#[test]
fn a_javascript_plugin_queues_requests_sent_only_after_the_commit() {
    queued_after_commit("js");
}
