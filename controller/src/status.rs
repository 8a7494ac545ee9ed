//! The status page (issue 24): server-rendered HTML on the controller's
//! gRPC port (TLS, the same certificate), read-only and behind the `reader`
//! role: a client certificate mapped to a role, or an r2o token as a bearer
//! token or as the password of HTTP Basic authentication (what a browser
//! asks for; the user name is not checked). No JavaScript, no build chain;
//! it refreshes itself every 15 s and reads on a phone.
//!
//! - `GET /status`: every table with its state ([`table_state`]), watermark
//!   and lag, next scheduled run, tasks in flight, what it waits for; the
//!   minion pool per tag and per minion; the last failures with errors.
//! - `GET /status/tables/<table>`: one table and its history (newest
//!   first, at most [`HISTORY_ROWS`] tasks).
//!
//! The rules (state, escaping, rendering) are pure functions over
//! [`StatusView`] and [`TableDetail`]; the handlers only read.

use crate::access::Gate;
use crate::pool::PoolFigures;
use crate::service::ControllerSvc;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use r2o_common::access::Role;
use r2o_common::window::format_utc;
use r2o_proto::controller as pb;
use std::collections::BTreeMap;
use std::fmt::Write;

/// Tasks of a table's history its page shows, newest first.
pub const HISTORY_ROWS: usize = 50;

/// Failures the overview lists, newest first.
pub const FAILURE_ROWS: usize = 20;

/// What a table is doing, as the page shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableState {
    /// A task of it is FAILED: its later windows wait (`r2o retry`).
    Failing,
    /// Paused by an operator: no new task.
    Paused,
    /// Tasks are pending or running.
    Running,
    /// Nothing is running or ready: it waits for time or data.
    CaughtUp,
    /// Something is ready but not planned: the watermark's `next` says why.
    Waiting,
}

impl TableState {
    /// The word the page shows (and its CSS class and `data-state`).
    pub fn name(self) -> &'static str {
        match self {
            TableState::Failing => "failing",
            TableState::Paused => "paused",
            TableState::Running => "running",
            TableState::CaughtUp => "caught up",
            TableState::Waiting => "waiting",
        }
    }
}

/// A table's state from whether it is paused, its FAILED tasks, its tasks
/// in flight (PENDING, RUNNING, STAGED) and whether the watermark reports it
/// idle; a failure shows before anything else, then a pause. Pure.
pub fn table_state(paused: bool, failed: usize, in_flight: usize, idle: bool) -> TableState {
    if failed > 0 {
        TableState::Failing
    } else if paused {
        TableState::Paused
    } else if in_flight > 0 {
        TableState::Running
    } else if idle {
        TableState::CaughtUp
    } else {
        TableState::Waiting
    }
}

/// One table's row of the overview.
#[derive(Debug, Clone, Default)]
pub struct TableRow {
    /// Raw table name.
    pub name: String,
    /// Paused by an operator.
    pub paused: bool,
    /// The watermark, UTC epoch ms; `None` before the first commit.
    pub watermark_ms: Option<i64>,
    /// `now - bufferTimePeriod - watermark`, ms (0 when ahead).
    pub lag_ms: i64,
    /// Its schedule (Quartz cron; empty: planned continuously).
    pub schedule: String,
    /// Its next scheduled run, UTC epoch ms.
    pub next_run_ms: Option<i64>,
    /// PENDING tasks.
    pub pending: usize,
    /// RUNNING tasks.
    pub running: usize,
    /// STAGED tasks (waiting for the tasks before them to commit).
    pub staged: usize,
    /// FAILED tasks.
    pub failed: usize,
    /// The watermark reports nothing running or ready.
    pub idle: bool,
    /// What happens next, or why nothing does (the watermark's `next`).
    pub next: String,
    /// Windows committed (with data).
    pub windows_committed: u64,
    /// Rows written to OFFLINE segments.
    pub rows_out: u64,
}

impl TableRow {
    /// Its state ([`table_state`]).
    pub fn state(&self) -> TableState {
        table_state(self.paused, self.failed, self.pending + self.running + self.staged, self.idle)
    }
}

/// A live minion as the page lists it.
#[derive(Debug, Clone, Default)]
pub struct MinionRow {
    /// Minion id.
    pub id: String,
    /// Its `minionInstanceTag`.
    pub tag: String,
    /// Task slots.
    pub slots: u32,
    /// Tasks it runs now.
    pub running: usize,
    /// Draining: it claims nothing more.
    pub draining: bool,
}

/// A failed attempt as the page lists it.
#[derive(Debug, Clone, Default)]
pub struct FailureRow {
    /// Raw table name.
    pub table: String,
    /// Task id.
    pub task: String,
    /// Its first window's start, UTC epoch ms.
    pub window_start_ms: i64,
    /// Its state now (FAILED, or PENDING again for a retry).
    pub state: String,
    /// Its attempts so far.
    pub attempt: u32,
    /// Its last error.
    pub error: String,
    /// When it was created, UTC epoch ms (newest first).
    pub created_ms: i64,
}

/// Everything the overview shows.
#[derive(Debug, Clone, Default)]
pub struct StatusView {
    /// This controller's id.
    pub controller: String,
    /// The leader's id (empty: none).
    pub leader: String,
    /// When the page was made, UTC epoch ms.
    pub now_ms: i64,
    /// Every table, by name.
    pub tables: Vec<TableRow>,
    /// The pool per tag ([`crate::pool::pool_figures`]).
    pub pool: BTreeMap<String, PoolFigures>,
    /// Every live minion.
    pub minions: Vec<MinionRow>,
    /// The last failures, newest first.
    pub failures: Vec<FailureRow>,
}

/// One table's page: its row and its tasks, newest first.
#[derive(Debug, Clone, Default)]
pub struct TableDetail {
    /// The overview's row.
    pub row: TableRow,
    /// Its tasks (active and history), newest first, at most [`HISTORY_ROWS`].
    pub tasks: Vec<pb::Task>,
    /// Tasks in its history in all (the page shows the newest).
    pub total_tasks: usize,
}

/// `s` with HTML's five special characters escaped. Pure.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A table name as a path segment (letters, digits, `_`, `-`, `.` kept;
/// everything else percent-encoded). Pure.
fn path_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// UTC epoch ms as `2026-12-07 09:41:58Z` ([`format_utc`] with a space,
/// easier to read in a table).
pub fn utc(ms: i64) -> String {
    format_utc(ms).replacen('T', " ", 1)
}

/// A duration in ms as `3d 4h`, `2h 5m`, `4m 10s`, `12s`.
pub fn span(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0 auto;max-width:72rem;padding:0.75rem;\
color:#1b1b1b;background:#fff}h1{font-size:1.4rem;margin:0.2rem 0}h2{font-size:1.1rem;margin:1.2rem 0 0.4rem}\
.meta{color:#555;font-size:0.85rem}.scroll{overflow-x:auto}table{border-collapse:collapse;width:100%;\
font-size:0.9rem}th,td{text-align:left;padding:0.3rem 0.5rem;border-bottom:1px solid #ddd;vertical-align:top}\
th{background:#f3f3f3}.state{font-weight:600;white-space:nowrap}.failing{color:#b00020}.paused{color:#8a6d00}\
.running{color:#0b57d0}.caught-up{color:#137333}.waiting{color:#555}.num{text-align:right;white-space:nowrap}\
.why{color:#444;font-size:0.85rem}.err{font-family:ui-monospace,monospace;font-size:0.8rem;white-space:pre-wrap;\
word-break:break-word}a{color:#0b57d0}";

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<meta http-equiv=\"refresh\" content=\"15\"><title>{}</title><style>{STYLE}</style></head>\n<body>\n{body}</body></html>\n",
        escape(title)
    )
}

fn state_cell(state: TableState) -> String {
    format!("<td class=\"state {}\">{}</td>", state.name().replace(' ', "-"), state.name())
}

fn watermark_cell(row: &TableRow) -> String {
    match row.watermark_ms {
        Some(ms) => format!("<td class=\"watermark\" data-ms=\"{ms}\">{}</td>", utc(ms)),
        None => "<td class=\"watermark\" data-ms=\"\">none yet</td>".into(),
    }
}

fn tasks_cell(row: &TableRow) -> String {
    let mut parts = vec![];
    for (n, what) in
        [(row.running, "running"), (row.pending, "pending"), (row.staged, "staged"), (row.failed, "FAILED")]
    {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    let text = if parts.is_empty() { "none".to_string() } else { parts.join(", ") };
    format!("<td class=\"tasks\" data-in-flight=\"{}\">{text}</td>", row.pending + row.running + row.staged)
}

fn next_run_cell(row: &TableRow) -> String {
    match (row.schedule.is_empty(), row.next_run_ms) {
        (true, _) => "<td class=\"next-run\">continuous</td>".into(),
        (false, Some(ms)) => {
            format!("<td class=\"next-run\">{} <span class=\"why\">({})</span></td>", utc(ms), escape(&row.schedule))
        }
        (false, None) => {
            format!("<td class=\"next-run\">running now <span class=\"why\">({})</span></td>", escape(&row.schedule))
        }
    }
}

/// The overview page. Pure.
pub fn render_overview(v: &StatusView) -> String {
    let mut b = String::new();
    let _ = write!(
        b,
        "<h1>r2o status</h1>\n<p class=\"meta\">controller <b>{}</b> &middot; leader <b id=\"leader\">{}</b> &middot; {} &middot; \
<a href=\"/status\">refresh</a></p>\n",
        escape(&v.controller),
        if v.leader.is_empty() { "none".to_string() } else { escape(&v.leader) },
        utc(v.now_ms)
    );
    let _ = write!(
        b,
        "<h2>Tables ({})</h2>\n<div class=\"scroll\"><table id=\"tables\"><tr><th>table</th><th>state</th>\
<th>watermark</th><th class=\"num\">lag</th><th>next run</th><th>tasks</th><th class=\"num\">windows</th>\
<th class=\"num\">rows out</th><th>next</th></tr>\n",
        v.tables.len()
    );
    for row in &v.tables {
        let state = row.state();
        let _ = writeln!(
            b,
            "<tr data-table=\"{name}\" data-state=\"{state}\"><td><a href=\"/status/tables/{path}\">{name}</a></td>{}{}\
<td class=\"num lag\" data-ms=\"{lag}\">{lag_text}</td>{}{}<td class=\"num\">{}</td><td class=\"num\">{}</td>\
<td class=\"why\">{}</td></tr>",
            state_cell(state),
            watermark_cell(row),
            next_run_cell(row),
            tasks_cell(row),
            row.windows_committed,
            row.rows_out,
            escape(&row.next),
            name = escape(&row.name),
            path = path_segment(&row.name),
            state = state.name(),
            lag = row.lag_ms,
            lag_text = span(row.lag_ms),
        );
    }
    b.push_str("</table></div>\n");
    b.push_str(
        "<h2>Minion pool</h2>\n<div class=\"scroll\"><table id=\"pool\"><tr><th>minionInstanceTag</th>\
<th class=\"num\">minions</th><th class=\"num\">draining</th><th class=\"num\">slots</th><th class=\"num\">running</th>\
<th class=\"num\">waiting</th><th class=\"num\">in backoff</th><th class=\"num\">oldest wait</th></tr>\n",
    );
    for (tag, p) in &v.pool {
        let _ = writeln!(
            b,
            "<tr data-tag=\"{t}\" data-minions=\"{}\" data-slots=\"{}\" data-running=\"{}\" data-waiting=\"{}\"><td>{t}</td>\
<td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
<td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            p.minions,
            p.slots,
            p.running,
            p.waiting,
            p.minions,
            p.draining,
            p.slots,
            p.running,
            p.waiting,
            p.backing_off,
            if p.waiting == 0 { "-".to_string() } else { span(p.oldest_wait_ms) },
            t = escape(tag),
        );
    }
    b.push_str(
        "</table></div>\n<div class=\"scroll\"><table id=\"minions\"><tr><th>minion</th><th>tag</th>\
<th class=\"num\">slots</th><th class=\"num\">running</th><th>state</th></tr>\n",
    );
    if v.minions.is_empty() {
        b.push_str("<tr><td colspan=\"5\">no live minion</td></tr>\n");
    }
    for m in &v.minions {
        let _ = writeln!(
            b,
            "<tr data-minion=\"{id}\"><td>{id}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            escape(&m.tag),
            m.slots,
            m.running,
            if m.draining { "draining" } else { "claiming" },
            id = escape(&m.id),
        );
    }
    b.push_str("</table></div>\n");
    b.push_str("<h2>Last failures</h2>\n");
    if v.failures.is_empty() {
        b.push_str("<p id=\"failures\">none</p>\n");
    } else {
        b.push_str(
            "<div class=\"scroll\"><table id=\"failures\"><tr><th>table</th><th>window</th><th>state</th>\
<th class=\"num\">attempt</th><th>last error</th></tr>\n",
        );
        for f in &v.failures {
            let _ = writeln!(
                b,
                "<tr data-table=\"{t}\" data-task=\"{}\"><td><a href=\"/status/tables/{}\">{t}</a></td><td>{}</td><td>{}</td>\
<td class=\"num\">{}</td><td class=\"err\">{}</td></tr>",
                escape(&f.task),
                path_segment(&f.table),
                utc(f.window_start_ms),
                escape(&f.state),
                f.attempt,
                escape(&f.error),
                t = escape(&f.table),
            );
        }
        b.push_str("</table></div>\n");
    }
    page("r2o status", &b)
}

/// One table's page with its history. Pure.
pub fn render_table(d: &TableDetail, now_ms: i64) -> String {
    let row = &d.row;
    let state = row.state();
    let mut b = String::new();
    let _ = write!(
        b,
        "<p class=\"meta\"><a href=\"/status\">&larr; all tables</a> &middot; {}</p>\n<h1>{}</h1>\n\
<div class=\"scroll\"><table id=\"table\" data-table=\"{}\" data-state=\"{}\"><tr><th>state</th>{}</tr>\
<tr><th>watermark</th>{}</tr><tr><th>lag</th><td class=\"lag\" data-ms=\"{}\">{}</td></tr><tr><th>next run</th>{}</tr>\
<tr><th>tasks</th>{}</tr><tr><th>windows committed</th><td>{}</td></tr><tr><th>rows out</th><td>{}</td></tr>\
<tr><th>next</th><td class=\"why\">{}</td></tr></table></div>\n",
        utc(now_ms),
        escape(&row.name),
        escape(&row.name),
        state.name(),
        state_cell(state),
        watermark_cell(row),
        row.lag_ms,
        span(row.lag_ms),
        next_run_cell(row),
        tasks_cell(row),
        row.windows_committed,
        row.rows_out,
        escape(&row.next),
    );
    let _ = write!(
        b,
        "<h2>History (newest {} of {})</h2>\n<div class=\"scroll\"><table id=\"history\"><tr><th>window start</th>\
<th class=\"num\">windows</th><th>state</th><th class=\"num\">attempt</th><th class=\"num\">rows in</th>\
<th class=\"num\">rows out</th><th>minion</th><th>finished</th><th>errors</th></tr>\n",
        d.tasks.len(),
        d.total_tasks
    );
    for t in &d.tasks {
        let errors: Vec<String> = t.errors.iter().map(|e| escape(e)).collect();
        let _ = writeln!(
            b,
            "<tr data-task=\"{}\" data-state=\"{}\"><td>{}</td><td class=\"num\">{}</td><td>{}</td><td class=\"num\">{}</td>\
<td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td><td class=\"err\">{}</td></tr>",
            escape(&t.id),
            escape(&t.state),
            utc(t.window_start_ms),
            t.windows,
            escape(&t.state),
            t.attempt,
            t.rows_in,
            t.rows_out,
            escape(&t.minion),
            if t.finished_ms > 0 { utc(t.finished_ms) } else { "-".into() },
            errors.join("\n"),
        );
    }
    b.push_str("</table></div>\n");
    page(&format!("r2o: {}", row.name), &b)
}

/// What the status routes share.
#[derive(Clone)]
pub struct StatusState {
    /// The service the page reads through (the same reads as the CLI's).
    pub svc: ControllerSvc,
    /// Who may read it.
    pub gate: Gate,
    /// This controller's id (the page names it).
    pub controller: String,
}

/// The status routes (`/status`, `/status/tables/{table}`), to merge into
/// the gRPC server's router.
pub fn routes(state: StatusState) -> axum::Router {
    axum::Router::new()
        .route("/status", axum::routing::get(overview))
        .route("/status/tables/{table}", axum::routing::get(table_page))
        .with_state(state)
}

fn html(body: String) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-store")], body)
        .into_response()
}

fn refused(status: StatusCode, message: &str) -> Response {
    let mut r = (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{message}\n")).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"r2o\", charset=\"UTF-8\""),
        );
    }
    r
}

/// The caller may read (`reader` or more), or the reply that says why not.
async fn admit(
    gate: &Gate,
    headers: &HeaderMap,
    req_certs: Option<std::sync::Arc<Vec<tonic::transport::CertificateDer<'static>>>>,
) -> Result<(), Response> {
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match gate.check_http(auth, req_certs, "status page", Role::Reader).await {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::PermissionDenied => Err(refused(StatusCode::FORBIDDEN, s.message())),
        Err(s) if s.code() == tonic::Code::Unauthenticated => Err(refused(StatusCode::UNAUTHORIZED, s.message())),
        Err(s) => Err(refused(StatusCode::SERVICE_UNAVAILABLE, s.message())),
    }
}

fn peer_certs(req: &Request) -> Option<std::sync::Arc<Vec<tonic::transport::CertificateDer<'static>>>> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|i| i.peer_certs())
}

async fn overview(State(s): State<StatusState>, req: Request) -> Response {
    if let Err(r) = admit(&s.gate, req.headers(), peer_certs(&req)).await {
        return r;
    }
    match s.svc.status_view(&s.controller).await {
        Ok(v) => html(render_overview(&v)),
        Err(e) => refused(StatusCode::SERVICE_UNAVAILABLE, &format!("cannot read the cluster's state: {e}")),
    }
}

async fn table_page(State(s): State<StatusState>, Path(table): Path<String>, req: Request) -> Response {
    if let Err(r) = admit(&s.gate, req.headers(), peer_certs(&req)).await {
        return r;
    }
    match s.svc.table_detail(&table).await {
        Ok(d) => html(render_table(&d, r2o_common::meta::now_ms())),
        Err(crate::error::ControllerError::NotFound(what)) => {
            refused(StatusCode::NOT_FOUND, &format!("{what}: not found"))
        }
        Err(e) => refused(StatusCode::SERVICE_UNAVAILABLE, &format!("cannot read the table's state: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_shows_first_then_a_pause_then_work() {
        assert_eq!(table_state(true, 1, 3, false), TableState::Failing);
        assert_eq!(table_state(true, 0, 3, true), TableState::Paused);
        assert_eq!(table_state(false, 0, 1, false), TableState::Running);
        assert_eq!(table_state(false, 0, 0, true), TableState::CaughtUp);
        assert_eq!(table_state(false, 0, 0, false), TableState::Waiting);
    }

    #[test]
    fn text_is_escaped_and_names_are_path_safe() {
        assert_eq!(escape("<a href='x'>&\"</a>"), "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;");
        assert_eq!(path_segment("flights_2013"), "flights_2013");
        assert_eq!(path_segment("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn times_and_spans_read_plainly() {
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(1_600_002_000_000), "2020-09-13 13:00:00Z");
        assert_eq!(utc(-1_000), "1969-12-31 23:59:59Z");
        assert_eq!(utc(-1_794_182_400_000), "1913-02-23 00:00:00Z");
        assert_eq!(span(12_000), "12s");
        assert_eq!(span(250_000), "4m 10s");
        assert_eq!(span(7_500_000), "2h 5m");
        assert_eq!(span(3 * 86_400_000 + 4 * 3_600_000), "3d 4h");
        assert_eq!(span(-5), "0s");
    }

    fn row(name: &str) -> TableRow {
        TableRow {
            name: name.into(),
            watermark_ms: Some(1_600_002_000_000),
            next: "waits for <data>".into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_overview_shows_each_table_its_pool_and_failures() {
        let mut failing = row("f<x>");
        failing.failed = 1;
        let mut paused = row("p");
        paused.paused = true;
        paused.schedule = "0 0 * * * ?".into();
        paused.next_run_ms = Some(1_600_005_600_000);
        let mut caught_up = row("c");
        caught_up.idle = true;
        caught_up.lag_ms = 1_200_000;
        let mut pool = BTreeMap::new();
        pool.insert(
            "minion_untagged".to_string(),
            PoolFigures { minions: 1, slots: 2, running: 1, waiting: 3, oldest_wait_ms: 65_000, ..Default::default() },
        );
        let v = StatusView {
            controller: "c-1".into(),
            leader: "c-1".into(),
            now_ms: 1_600_009_200_000,
            tables: vec![failing, paused, caught_up],
            pool,
            minions: vec![MinionRow {
                id: "m-1".into(),
                tag: "minion_untagged".into(),
                slots: 2,
                running: 1,
                draining: true,
            }],
            failures: vec![FailureRow {
                table: "f<x>".into(),
                task: "t1".into(),
                state: "FAILED".into(),
                attempt: 3,
                error: "bad <value>".into(),
                ..Default::default()
            }],
        };
        let html = render_overview(&v);
        assert!(html.starts_with("<!doctype html>") && html.contains("name=\"viewport\""), "{html}");
        assert!(!html.contains("<script"), "no JavaScript");
        assert!(html.contains("data-table=\"f&lt;x&gt;\" data-state=\"failing\""), "{html}");
        assert!(html.contains("href=\"/status/tables/f%3Cx%3E\""), "{html}");
        assert!(html.contains("data-table=\"p\" data-state=\"paused\""), "{html}");
        assert!(html.contains("2020-09-13 14:00:00Z <span class=\"why\">(0 0 * * * ?)</span>"), "{html}");
        assert!(html.contains("data-table=\"c\" data-state=\"caught up\""), "{html}");
        assert!(html.contains("data-ms=\"1200000\">20m 0s<"), "{html}");
        assert!(html.contains("waits for &lt;data&gt;") && !html.contains("<data>"), "{html}");
        assert!(html.contains("data-tag=\"minion_untagged\" data-minions=\"1\" data-slots=\"2\" data-running=\"1\" data-waiting=\"3\""), "{html}");
        assert!(html.contains(">1m 5s<"), "the oldest wait: {html}");
        assert!(html.contains("<td>draining</td>"), "{html}");
        assert!(html.contains("bad &lt;value&gt;") && html.contains("data-task=\"t1\""), "{html}");
    }

    #[test]
    fn a_table_page_lists_its_history() {
        let task = |id: &str, state: &str, errors: Vec<String>| pb::Task {
            id: id.into(),
            state: state.into(),
            attempt: 2,
            rows_out: 7,
            windows: 1,
            errors,
            ..Default::default()
        };
        let d = TableDetail {
            row: row("t"),
            tasks: vec![task("t2", "PENDING", vec!["no <footer>".into()]), task("t1", "SUCCEEDED", vec![])],
            total_tasks: 80,
        };
        let html = render_table(&d, 0);
        assert!(html.contains("History (newest 2 of 80)"), "{html}");
        assert!(html.contains("data-task=\"t2\" data-state=\"PENDING\""), "{html}");
        assert!(html.contains("no &lt;footer&gt;"), "{html}");
        assert!(html.find("data-task=\"t2\"") < html.find("data-task=\"t1\""), "newest first");
    }
}
