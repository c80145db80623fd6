//! `eventhost invoke`: one event through a plugin in the real sandbox, with
//! state in memory and no Redis, reported as JSON or text.

mod support;

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use support::plugins;

/// Runs `eventhost invoke <plugin> <args>` in an empty folder (no config,
/// no Redis), with `stdin`.
fn invoke(plugin: &str, args: &[&str], stdin: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_eventhost"))
        .arg("invoke")
        .arg(plugins().join(plugin))
        .args(args)
        .current_dir(dir.path())
        .env("XDG_CACHE_HOME", support::cache_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// The JSON report of an invocation that must exit with `code`.
fn report(output: &Output, code: i32) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

#[test]
fn an_ok_event_reports_state_publishes_and_logs() {
    let out = invoke(
        "probe.wasm",
        &[
            "--type",
            "Demo",
            "--data",
            r#"{"act": "log", "event_id": "e-1"}"#,
            "--state",
            "count=41",
            "--plugin-config",
            "follow_up=Pong",
            "--json",
        ],
        "",
    );
    let r = report(&out, 0);
    assert_eq!(r["outcome"], "ok");
    assert_eq!(r["reason"], Value::Null);
    assert_eq!(r["state"]["set"]["count"], "42", "read 41 from --state");
    assert_eq!(r["state"]["set"]["seen:e-1"], "1");
    assert_eq!(r["state"]["deleted"], serde_json::json!([]));
    assert_eq!(r["published"][0]["event_type"], "Pong");
    assert_eq!(r["published"][0]["data"]["source_id"], "e-1");
    let logs = r["logs"].as_array().unwrap();
    assert_eq!(logs.len(), 5, "{logs:?}");
    assert_eq!(logs[0]["level"], "trace");
    assert_eq!(logs[4]["level"], "error");
    assert_eq!(logs[4]["message"], "probe error log for e-1");
    assert!(r["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(
        out.stderr.is_empty(),
        "plugin logs go to the report, not stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn each_failure_has_its_outcome_reason_and_exit_status() {
    let r = report(
        &invoke(
            "probe.wasm",
            &["--type", "T", "--data", r#"{"act": "retry"}"#, "--json"],
            "",
        ),
        3,
    );
    assert_eq!(r["outcome"], "retry");
    let r = report(
        &invoke(
            "probe.wasm",
            &["--type", "T", "--data", r#"{"act": "reject"}"#, "--json"],
            "",
        ),
        4,
    );
    assert_eq!(
        (r["outcome"].as_str(), r["reason"].as_str()),
        (Some("reject"), Some("asked to reject"))
    );
    let r = report(
        &invoke(
            "probe.wasm",
            &["--type", "T", "--data", r#"{"act": "panic"}"#, "--json"],
            "",
        ),
        5,
    );
    assert_eq!(r["outcome"], "trap");
    assert!(
        r["reason"].as_str().unwrap().contains("asked to panic"),
        "the plugin's last words: {r}"
    );
    let r = report(
        &invoke(
            "probe.wasm",
            &[
                "--type",
                "T",
                "--data",
                r#"{"act": "spin"}"#,
                "--timeout-ms",
                "100",
                "--json",
            ],
            "",
        ),
        6,
    );
    assert_eq!(r["outcome"], "timeout");
    let r = report(
        &invoke(
            "probe.wasm",
            &[
                "--type",
                "T",
                "--data",
                r#"{"act": "alloc", "mb": 64}"#,
                "--memory-mb",
                "16",
                "--json",
            ],
            "",
        ),
        7,
    );
    assert_eq!(r["outcome"], "out-of-memory");
    // A failure commits nothing: the report has no state.
    assert_eq!(r["state"]["set"], serde_json::json!({}));
}

#[test]
fn the_event_can_come_from_stdin_with_its_type() {
    let out = invoke(
        "probe.wasm",
        &["--event", "-", "--attempt", "3", "--json"],
        r#"{"event_type": "FromFile", "event_id": "f-1"}"#,
    );
    let r = report(&out, 0);
    assert_eq!(r["state"]["set"]["seen:f-1"], "3", "the attempt given");
}

#[test]
fn what_cannot_run_says_why_and_exits_1() {
    let out = invoke("not_a_plugin.wasm", &["--type", "T"], "");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no exported function `handle`"), "{err}");

    let out = invoke("probe.wasm", &["--data", "{}"], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--type"));

    let out = invoke("probe.wasm", &["--type", "T", "--state", "novalue"], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("key=value"));

    let out = invoke("probe.wasm", &["--type", "T", "--data", "[1]"], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be a JSON object"));
}

#[test]
fn text_output_is_for_people() {
    let out = invoke(
        "probe.wasm",
        &["--type", "T", "--data", r#"{"act": "reject"}"#],
        "",
    );
    assert_eq!(out.status.code(), Some(4));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("outcome: reject ("), "{text}");
    assert!(text.contains("reason: asked to reject"), "{text}");
    assert!(
        !text.contains("state set"),
        "a failure commits nothing, so it reports no state: {text}"
    );

    let out = invoke("probe.wasm", &["--type", "T", "--state", "count=1"], "");
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("state set: count = \"2\""), "{text}");
}

/// A plugin's HTTP requests: made to a host `--grant-http` names, denied
/// elsewhere, and each listed with its method, URL and what came of it.
#[test]
fn requests_to_granted_hosts_are_made_and_listed() {
    use std::io::{BufRead, BufReader};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                line.clear();
            }
            let mut stream = stream;
            let _ = stream.write_all(
                b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
            );
        }
    });
    let url = format!("http://127.0.0.1:{port}/hook");
    let data = serde_json::json!({"url": url, "times": 1}).to_string();
    let granted = format!("http://127.0.0.1:{port}");
    let out = invoke(
        "fetch.wasm",
        &[
            "--type",
            "Fetch",
            "--data",
            &data,
            "--grant-http",
            &granted,
            "--json",
        ],
        "",
    );
    let report = report(&out, 0);
    let requests = report["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 1, "{report}");
    assert_eq!(requests[0]["method"], "GET");
    assert_eq!(requests[0]["url"], url);
    assert_eq!(requests[0]["status"], 201);

    let out = invoke("fetch.wasm", &["--type", "Fetch", "--data", &data], "");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains(&format!(
            "http: GET {url} -> no response: HttpRequestDenied"
        )),
        "{text}"
    );
}
