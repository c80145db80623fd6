//! The web console at `/`: an overview of the bus that updates itself, a
//! DLQ browser with replay and purge, the reload history.
//!
//! The page is three files inside the binary (no build step, no
//! front-end toolchain) and a small JSON API over what `eventhost status`
//! and `eventhost dlq` read, from Redis. Payloads are operator data, so
//! reading them is authorised like changing them: the overview, the DLQ
//! list and an entry need the read token (`[http] read_token` or
//! `EVENTHOST_READ_TOKEN`) or the admin token as a bearer token; replay
//! and purge need the admin token (`[http] admin_token` or
//! `EVENTHOST_ADMIN_TOKEN`) and a JSON body (a form on another site cannot
//! send one without asking first). Neither comes from a foreign `Origin`,
//! so another page open in the operator's browser can do neither. The
//! list shows summaries and cut previews ([`Summary`]), within a byte
//! budget per page; the whole payload is fetched one entry at a time.
//! Payloads are data: the page sets them as text, never as markup, and
//! its Content-Security-Policy runs no script but its own.

use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::Site;
use crate::bus::connection::RedisConn;
use crate::bus::dlq::{self, Dlq, DlqError, Filter, Pace, Selection, Summary, Target};
use crate::bus::keys::Keys;
use crate::bus::status;

/// Most dead letters one list request returns (each a summary; the page
/// is bounded in bytes too, by `bus::dlq::PAGE_BUDGET`).
const MAX_LIST: usize = 1000;

/// What the console needs beside the daemon's readiness.
#[derive(Clone)]
pub struct Console {
    pub keys: Keys,
    /// The configured subscribers, shown even before Redis knows them.
    pub subscribers: Vec<status::Configured>,
    /// Replay and purge are refused without it; it reads too.
    pub admin_token: Option<String>,
    /// Reads (the overview, the DLQ list and entries) are refused without
    /// it or the admin token.
    pub read_token: Option<String>,
}

/// The console's routes.
pub fn routes() -> Router<Site> {
    Router::new()
        .route("/", get(|| asset("text/html; charset=utf-8", INDEX)))
        .route(
            "/console.js",
            get(|| asset("text/javascript; charset=utf-8", SCRIPT)),
        )
        .route(
            "/console.css",
            get(|| asset("text/css; charset=utf-8", STYLE)),
        )
        .route("/api/status", get(api_status))
        .route("/api/dlq/{target}", get(api_list))
        .route("/api/dlq/{target}/entry/{id}", get(api_entry))
        .route("/api/dlq/{target}/replay", post(api_replay))
        .route("/api/dlq/{target}/purge", post(api_purge))
}

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/console.js");
const STYLE: &str = include_str!("assets/console.css");

/// No script, style or frame but the console's own: a payload that
/// slipped into markup would still not run.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                      connect-src 'self'; img-src 'self'; base-uri 'none'; \
                      form-action 'none'; frame-ancestors 'none'";

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    guard_headers(response.headers_mut());
    response
}

fn guard_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// An API answer: JSON with the console's headers.
fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    let mut response = (status, Json(body)).into_response();
    guard_headers(response.headers_mut());
    response
}

fn refusal(status: StatusCode, message: impl Into<String>) -> Response {
    answer(status, json!({"error": message.into()}))
}

/// Why a request is not served; sent as `{"error": …}` with its status.
struct Refused(StatusCode, String);

impl Refused {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Refused(status, message.into())
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        refusal(self.0, self.1)
    }
}

/// The status of each DLQ error: the rules are `bus::dlq`'s, the
/// console only says them in HTTP. A Redis outage is 503, to try again,
/// never a conflict.
impl From<DlqError> for Refused {
    fn from(err: DlqError) -> Self {
        let status = match &err {
            DlqError::BadRequest(_) => StatusCode::BAD_REQUEST,
            DlqError::NotFound(_) => StatusCode::NOT_FOUND,
            DlqError::Conflict(_) => StatusCode::CONFLICT,
            DlqError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        Refused(status, err.to_string())
    }
}

fn redis(site: &Site) -> Result<RedisConn, Refused> {
    site.ready.borrow().redis.clone().ok_or_else(|| {
        Refused::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not connected to Redis yet",
        )
    })
}

async fn api_status(State(site): State<Site>, headers: HeaderMap) -> Response {
    if let Err(refused) = authorize_paced(&site.console, &headers, Access::Read).await {
        return refused.into_response();
    }
    let mut conn = match redis(&site) {
        Ok(conn) => conn,
        Err(refused) => return refused.into_response(),
    };
    let console = &site.console;
    match status::read(&mut conn, &console.keys, &console.subscribers).await {
        Ok(status) => answer(StatusCode::OK, json!(status)),
        Err(err) => refusal(StatusCode::BAD_GATEWAY, format!("cannot read Redis: {err}")),
    }
}

/// Filters as the page sends them; empty fields select everything.
#[derive(Deserialize, Default)]
struct FilterQuery {
    kind: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    since: Option<String>,
    limit: Option<usize>,
    /// The list's next page starts after this id (its `next`).
    after: Option<String>,
}

impl FilterQuery {
    fn filter(&self) -> Result<Filter, DlqError> {
        Filter::parse(
            self.kind.as_deref(),
            self.event_type.as_deref(),
            self.since.as_deref(),
        )
    }
}

async fn open(site: &Site, target: &str) -> Result<Dlq, Refused> {
    let target = Target::parse(target)?;
    let conn = redis(site)?;
    Ok(Dlq::new(conn, &site.console.keys, target)?)
}

async fn api_list(
    State(site): State<Site>,
    Path(target): Path<String>,
    Query(query): Query<FilterQuery>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = authorize_paced(&site.console, &headers, Access::Read).await {
        return refused.into_response();
    }
    let mut dlq = match open(&site, &target).await {
        Ok(dlq) => dlq,
        Err(refused) => return refused.into_response(),
    };
    let filter = match query.filter() {
        Ok(filter) => filter,
        Err(err) => return Refused::from(err).into_response(),
    };
    let limit = query.limit.unwrap_or(100).clamp(1, MAX_LIST);
    let listed = async {
        let page = dlq
            .summaries(&filter, query.after.as_deref(), limit)
            .await?;
        let depth = dlq.depth().await?;
        Ok::<_, DlqError>((page, depth))
    };
    match listed.await {
        Ok((page, depth)) => answer(
            StatusCode::OK,
            json!({
                "dlq": dlq.queue().dlq,
                "stream": dlq.queue().stream,
                "depth": depth,
                "entries": page.entries.iter().map(Summary::to_json).collect::<Vec<_>>(),
                "next": page.next,
            }),
        ),
        Err(err) => Refused::from(err).into_response(),
    }
}

async fn api_entry(
    State(site): State<Site>,
    Path((target, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = authorize_paced(&site.console, &headers, Access::Read).await {
        return refused.into_response();
    }
    let mut dlq = match open(&site, &target).await {
        Ok(dlq) => dlq,
        Err(refused) => return refused.into_response(),
    };
    match dlq.entry(&id).await {
        Ok(Some(entry)) => {
            // Built as text: the payload is not made into JSON values.
            let mut response = (
                [(header::CONTENT_TYPE, "application/json")],
                dlq::json_text(&entry),
            )
                .into_response();
            guard_headers(response.headers_mut());
            response
        }
        Ok(None) => refusal(
            StatusCode::NOT_FOUND,
            format!("{id} is not in {} (replayed or purged?)", dlq.queue().dlq),
        ),
        Err(err) => Refused::from(err).into_response(),
    }
}

/// Which dead letters a replay or purge takes: ids, or `all` with filters.
#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    all: bool,
    #[serde(flatten)]
    filter: FilterQuery,
}

/// What a request does with operator data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Reads it (the overview, the DLQ list, an entry): the read token or
    /// the admin token.
    Read,
    /// Changes it (replay, purge): the admin token, and a JSON body.
    Change,
}

/// The bearer token a request carries; empty if none.
fn bearer(headers: &HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
}

/// Whether a request may have `access`; the refusal to send if not.
fn authorize(console: &Console, headers: &HeaderMap, access: Access) -> Result<(), Refused> {
    let tokens: Vec<&str> = match access {
        Access::Read => [&console.read_token, &console.admin_token]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect(),
        Access::Change => console.admin_token.iter().map(String::as_str).collect(),
    };
    if tokens.is_empty() {
        return Err(Refused::new(
            StatusCode::FORBIDDEN,
            match access {
                Access::Read => {
                    "reading the bus is off on this host: set [http] read_token (or \
                     EVENTHOST_READ_TOKEN), or admin_token, and restart it"
                }
                Access::Change => {
                    "replay and purge are off on this host: set [http] admin_token (or \
                     EVENTHOST_ADMIN_TOKEN) and restart it"
                }
            },
        ));
    }
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(origin) = text(header::ORIGIN) {
        let host = text(header::HOST).unwrap_or_default();
        if origin != format!("http://{host}") && origin != format!("https://{host}") {
            return Err(Refused::new(
                StatusCode::FORBIDDEN,
                format!("refused: the request comes from another site ({origin})"),
            ));
        }
    }
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if site != "same-origin" && site != "none" {
            return Err(Refused::new(
                StatusCode::FORBIDDEN,
                format!("refused: the request comes from another site (Sec-Fetch-Site: {site})"),
            ));
        }
    }
    if access == Access::Change {
        let json = text(header::CONTENT_TYPE).is_some_and(|t| t.starts_with("application/json"));
        if !json {
            return Err(Refused::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "refused: send the request as application/json",
            ));
        }
    }
    let given = bearer(headers).as_bytes();
    // Every token compared, so the time says nothing of which one matched.
    let matched = tokens.iter().fold(false, |matched, token| {
        matched | same(given, token.as_bytes())
    });
    if !matched {
        return Err(Refused::new(
            StatusCode::UNAUTHORIZED,
            match access {
                Access::Read => "refused: reading the bus needs the read token or the admin token",
                Access::Change => "refused: replay and purge need the admin token",
            },
        ));
    }
    Ok(())
}

/// Compares in time independent of where they differ and of their
/// lengths (their digests are compared): the token cannot be guessed a
/// byte at a time, nor its length learnt.
fn same(given: &[u8], token: &[u8]) -> bool {
    use sha2::{Digest as _, Sha256};
    use subtle::ConstantTimeEq as _;
    let (given, token) = (Sha256::digest(given), Sha256::digest(token));
    given.as_slice().ct_eq(token.as_slice()).into()
}

/// How long a refused token waits before it is answered.
pub const FAILED_TOKEN_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// Set while a wrong token is being answered.
static ANSWERING_A_WRONG_TOKEN: AtomicBool = AtomicBool::new(false);

/// [`authorize`], paced: a wrong token (read or admin) is answered after
/// [`FAILED_TOKEN_DELAY`], and meanwhile every other read or change is
/// refused at once with 429, its token unchecked. Guessing goes at one
/// guess a second for the whole host, and a guesser holds one connection,
/// never one per guess (a queue of waiting guesses would fill the
/// listener). A request with no token guesses nothing: it is answered at
/// once (so a page not yet given its token does not hold the others back).
async fn authorize_paced(
    console: &Console,
    headers: &HeaderMap,
    access: Access,
) -> Result<(), Refused> {
    let busy = || {
        Refused::new(
            StatusCode::TOO_MANY_REQUESTS,
            "refused: a wrong token is being answered; try again in a second",
        )
    };
    if ANSWERING_A_WRONG_TOKEN.load(Ordering::Acquire) {
        return Err(busy());
    }
    let refused = match authorize(console, headers, access) {
        Ok(()) => return Ok(()),
        Err(refused) if refused.0 != StatusCode::UNAUTHORIZED => return Err(refused),
        Err(refused) if bearer(headers).is_empty() => return Err(refused),
        Err(refused) => refused,
    };
    if ANSWERING_A_WRONG_TOKEN.swap(true, Ordering::AcqRel) {
        return Err(busy());
    }
    // Cleared however the wait ends (a client that hangs up drops it).
    struct Answered;
    impl Drop for Answered {
        fn drop(&mut self) {
            ANSWERING_A_WRONG_TOKEN.store(false, Ordering::Release);
        }
    }
    let _answered = Answered;
    tokio::time::sleep(FAILED_TOKEN_DELAY).await;
    Err(refused)
}

/// The body, read only after the request is authorized.
fn choice(body: &[u8]) -> Result<Selection, Refused> {
    let choice: Choice = serde_json::from_slice(body).map_err(|err| {
        Refused::new(
            StatusCode::BAD_REQUEST,
            format!("not a choice of entries ({{\"ids\": [...]}} or {{\"all\": true}}): {err}"),
        )
    })?;
    let filter = choice.filter.filter()?;
    Ok(Selection::new(choice.ids, choice.all, filter)?)
}

async fn api_replay(
    State(site): State<Site>,
    Path(target): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(refused) = authorize_paced(&site.console, &headers, Access::Change).await {
        return refused.into_response();
    }
    let selection = match choice(&body) {
        Ok(selection) => selection,
        Err(refused) => return refused.into_response(),
    };
    let mut dlq = match open(&site, &target).await {
        Ok(dlq) => dlq,
        Err(refused) => return refused.into_response(),
    };
    match dlq.replay(&selection, Pace::default(), false, |_| {}).await {
        Ok(report) => {
            tracing::info!(
                dlq = %dlq.queue().dlq,
                "console: replayed {} dead letters into {}",
                report.moved.len(),
                dlq.queue().stream
            );
            answer(
                StatusCode::OK,
                json!({"replayed": report.moved.len(), "missing": report.missing}),
            )
        }
        Err(err) => Refused::from(err).into_response(),
    }
}

async fn api_purge(
    State(site): State<Site>,
    Path(target): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(refused) = authorize_paced(&site.console, &headers, Access::Change).await {
        return refused.into_response();
    }
    let selection = match choice(&body) {
        Ok(selection) => selection,
        Err(refused) => return refused.into_response(),
    };
    let mut dlq = match open(&site, &target).await {
        Ok(dlq) => dlq,
        Err(refused) => return refused.into_response(),
    };
    match dlq.purge(&selection).await {
        Ok(purged) => {
            tracing::info!(dlq = %dlq.queue().dlq, "console: purged {purged} dead letters");
            answer(StatusCode::OK, json!({"purged": purged}))
        }
        Err(err) => Refused::from(err).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn console(token: Option<&str>) -> Console {
        Console {
            keys: Keys::new("events:"),
            subscribers: Vec::new(),
            admin_token: token.map(str::to_string),
            read_token: None,
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn status(result: Result<(), Refused>) -> Option<StatusCode> {
        result.err().map(|r| r.0)
    }

    #[tokio::test(start_paused = true)]
    async fn wrong_tokens_are_answered_one_at_a_time_and_hold_no_queue() {
        let console = console(Some("s3cret"));
        let ok = [
            ("host", "127.0.0.1:9464"),
            ("content-type", "application/json"),
            ("authorization", "Bearer s3cret"),
        ];
        let wrong = headers(&[ok[0], ok[1], ("authorization", "Bearer guess")]);
        let started = tokio::time::Instant::now();
        let (first, second) = tokio::join!(
            authorize_paced(&console, &wrong, Access::Change),
            authorize_paced(&console, &wrong, Access::Change)
        );
        let mut answers = [status(first), status(second)];
        answers.sort();
        assert_eq!(
            answers,
            [
                Some(StatusCode::UNAUTHORIZED),
                Some(StatusCode::TOO_MANY_REQUESTS)
            ],
            "one guess waits, the other is turned away at once"
        );
        assert_eq!(started.elapsed(), FAILED_TOKEN_DELAY);
        assert_eq!(
            status(authorize_paced(&console, &headers(&ok), Access::Change).await),
            None,
            "the right token passes once the wrong one is answered"
        );
    }

    #[test]
    fn changes_need_the_token_json_and_this_origin() {
        let ok = [
            ("host", "127.0.0.1:9464"),
            ("content-type", "application/json"),
            ("authorization", "Bearer s3cret"),
        ];
        assert_eq!(
            status(authorize(
                &console(Some("s3cret")),
                &headers(&ok),
                Access::Change
            )),
            None
        );
        assert_eq!(
            status(authorize(&console(None), &headers(&ok), Access::Change)),
            Some(StatusCode::FORBIDDEN),
            "no token configured: off"
        );
        let wrong = [ok[0], ok[1], ("authorization", "Bearer s3creT")];
        assert_eq!(
            status(authorize(
                &console(Some("s3cret")),
                &headers(&wrong),
                Access::Change
            )),
            Some(StatusCode::UNAUTHORIZED)
        );
        let form = [ok[0], ("content-type", "text/plain"), ok[2]];
        assert_eq!(
            status(authorize(
                &console(Some("s3cret")),
                &headers(&form),
                Access::Change
            )),
            Some(StatusCode::UNSUPPORTED_MEDIA_TYPE)
        );
        let foreign = [ok[0], ok[1], ok[2], ("origin", "http://evil.example")];
        assert_eq!(
            status(authorize(
                &console(Some("s3cret")),
                &headers(&foreign),
                Access::Change
            )),
            Some(StatusCode::FORBIDDEN)
        );
        let own = [ok[0], ok[1], ok[2], ("origin", "http://127.0.0.1:9464")];
        assert_eq!(
            status(authorize(
                &console(Some("s3cret")),
                &headers(&own),
                Access::Change
            )),
            None
        );
        let cross = [ok[0], ok[1], ok[2], ("sec-fetch-site", "cross-site")];
        assert_eq!(
            status(authorize(
                &console(Some("s3cret")),
                &headers(&cross),
                Access::Change
            )),
            Some(StatusCode::FORBIDDEN)
        );
    }

    #[test]
    fn reads_need_the_read_or_the_admin_token_and_this_origin() {
        let mut console = console(Some("admin-token"));
        console.read_token = Some("read-token".into());
        let read = |auth: &str, extra: &[(&'static str, &str)]| {
            let mut pairs = vec![("host", "127.0.0.1:9464"), ("authorization", auth)];
            pairs.extend_from_slice(extra);
            status(authorize(&console, &headers(&pairs), Access::Read))
        };
        assert_eq!(
            read("Bearer read-token", &[]),
            None,
            "no JSON needed to read"
        );
        assert_eq!(
            read("Bearer admin-token", &[]),
            None,
            "the admin token reads"
        );
        assert_eq!(read("Bearer wrong", &[]), Some(StatusCode::UNAUTHORIZED));
        assert_eq!(read("", &[]), Some(StatusCode::UNAUTHORIZED));
        assert_eq!(
            read("Bearer read-token", &[("origin", "http://evil.example")]),
            Some(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            read("Bearer read-token", &[("sec-fetch-site", "cross-site")]),
            Some(StatusCode::FORBIDDEN)
        );
        let change = [
            ("host", "127.0.0.1:9464"),
            ("content-type", "application/json"),
            ("authorization", "Bearer read-token"),
        ];
        assert_eq!(
            status(authorize(&console, &headers(&change), Access::Change)),
            Some(StatusCode::UNAUTHORIZED),
            "the read token changes nothing"
        );
        let off = authorize(&self::console(None), &headers(&change), Access::Read).unwrap_err();
        assert_eq!(off.0, StatusCode::FORBIDDEN);
        assert!(off.1.contains("read_token"), "{}", off.1);
    }

    #[tokio::test(start_paused = true)]
    async fn no_token_is_no_guess_and_is_answered_at_once() {
        let console = console(Some("s3cret"));
        let started = tokio::time::Instant::now();
        let none = headers(&[("host", "127.0.0.1:9464")]);
        assert_eq!(
            status(authorize_paced(&console, &none, Access::Read).await),
            Some(StatusCode::UNAUTHORIZED)
        );
        assert_eq!(started.elapsed(), std::time::Duration::ZERO);
        let wrong = headers(&[
            ("host", "127.0.0.1:9464"),
            ("authorization", "Bearer guess"),
        ]);
        assert_eq!(
            status(authorize_paced(&console, &wrong, Access::Read).await),
            Some(StatusCode::UNAUTHORIZED)
        );
        assert_eq!(
            started.elapsed(),
            FAILED_TOKEN_DELAY,
            "a wrong read token is paced"
        );
    }

    #[test]
    fn a_choice_is_ids_or_all_with_filters() {
        assert!(matches!(choice(br#"{"ids":["1-0"]}"#), Ok(Selection::Ids(ids)) if ids == ["1-0"]));
        assert!(matches!(
            choice(br#"{"all":true,"kind":"trap","type":""}"#),
            Ok(Selection::Matching(f)) if f.kind.as_deref() == Some("trap") && f.event_type.is_none()
        ));
        for bad in [
            &br#"{}"#[..],
            br#"{"ids":["x"]}"#,
            br#"{"ids":["1-0"],"all":true}"#,
            b"nope",
        ] {
            assert_eq!(
                choice(bad).err().map(|r| r.0),
                Some(StatusCode::BAD_REQUEST)
            );
        }
    }

    #[test]
    fn dlq_errors_answer_400_404_409_and_503() {
        let status = |err| Refused::from(err).0;
        assert_eq!(
            status(DlqError::BadRequest("bad id".into())),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(DlqError::NotFound("no such".into())),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status(DlqError::Conflict("no reader".into())),
            StatusCode::CONFLICT
        );
        let outage =
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let err = DlqError::Unavailable(anyhow::Error::new(outage).context("cannot replay"));
        let refused = Refused::from(err);
        assert_eq!(
            refused.0,
            StatusCode::SERVICE_UNAVAILABLE,
            "an outage is not a conflict"
        );
        assert!(
            refused.1.starts_with("cannot replay: ") && refused.1.contains("try again"),
            "{}",
            refused.1
        );
        assert_eq!(
            choice(br#"{"ids":["x"]}"#).err().map(|r| r.0),
            Some(StatusCode::BAD_REQUEST)
        );
    }
}
