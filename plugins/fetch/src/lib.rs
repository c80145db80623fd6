//! A plugin that sends the request its event names, with an ordinary
//! wasip2 HTTP client (`waki`, over the standard `wasi:http`), and records
//! what came back in its state: `status:<event id>` and `body:<event id>`,
//! or `error:<event id>` with the error the host gave (for a redirect, the
//! body is its `Location`). It always returns ok, so a test reads every
//! outcome from state.

use eventhost_plugin::{Event, Failure, Guest};

#[derive(serde::Deserialize)]
struct Fetch {
    url: String,
    /// A body to POST; a GET without it.
    #[serde(default)]
    body: Option<String>,
    /// How many times to send it in this call (1 if left out).
    #[serde(default)]
    times: Option<u32>,
    /// Ask for a retry after the first attempt's requests.
    #[serde(default)]
    retry_first: bool,
    /// Follow a redirect (3xx with a `Location`) with a GET there, as a
    /// browser-like client would: the host checks that request like any.
    #[serde(default)]
    follow: bool,
}

/// Sends one request: its status and body, or the error.
fn send(client: &waki::Client, url: &str, body: Option<&str>) -> Result<(u16, Vec<u8>), String> {
    let request = match body {
        Some(body) => client.post(url).body(body.as_bytes().to_vec()),
        None => client.get(url),
    };
    request
        .send()
        .and_then(|response| {
            let status = response.status_code();
            let location = response
                .header("location")
                .and_then(|l| l.to_str().ok())
                .map(|l| l.as_bytes().to_vec());
            let body = response.body()?;
            // A redirect's body is where it points, for `follow`.
            Ok((status, location.unwrap_or(body)))
        })
        .map_err(|err| format!("{err:#}"))
}

struct FetchPlugin;

impl Guest for FetchPlugin {
    fn handle(event: Event) -> Result<(), Failure> {
        let fetch: Fetch = eventhost_plugin::data(&event)?;
        let client = waki::Client::new();
        let mut outcome = Err("no request sent".to_string());
        for _ in 0..fetch.times.unwrap_or(1) {
            outcome = send(&client, &fetch.url, fetch.body.as_deref());
        }
        if let Ok((300..=399, location)) = &outcome {
            if fetch.follow {
                let location = String::from_utf8_lossy(location).into_owned();
                outcome = send(&client, &location, None);
            }
        }
        match outcome {
            Ok((status, body)) => {
                eventhost_plugin::state_set(&format!("status:{}", event.id), &status.to_string());
                let body = String::from_utf8_lossy(&body);
                eventhost_plugin::state_set(&format!("body:{}", event.id), &body);
            }
            Err(err) => {
                eventhost_plugin::state_set(&format!("error:{}", event.id), &err);
            }
        }
        if fetch.retry_first && event.attempt == 1 {
            return Err(Failure::Retry("asked to retry once".into()));
        }
        Ok(())
    }
}

eventhost_plugin::export!(FetchPlugin);
