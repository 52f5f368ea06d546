//! The ops dashboard at `/`: server-rendered pages, no script and no asset from outside
//! (it works on an air-gapped host).
//!
//! - `/` — counts by status and mode, what is stuck (needs attention, retrying after
//!   errors, oldest not final) and a chart of transactions finished per minute;
//! - `/transactions` — a filtered listing with keyset paging;
//! - `/transactions/{gid}` — one transaction: fields, branch ops with payloads, the call
//!   timeline, the audit trail, and the actions.
//!
//! Every action is a form that leads to a confirmation page; only the confirmed form acts,
//! through the same code as the admin API, so it is audited the same way.

// A refusal here is a whole page (or a redirect) that the handler returns as it is.
#![allow(clippy::result_large_err)]

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use dtx::{GlobalStatus, Op, OpStatus, TransType};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::Deserialize;

use super::admin::{self, Detail, ListParams, Summary, summary};
use super::auth::{self, COOKIE, Caller, Denied};
use super::error::ApiError;
use crate::service::Coordinator;
use crate::store::{MinuteBucket, OperatorAction};

const CSS: &str = include_str!("dashboard.css");

/// The dashboard's routes.
pub fn router() -> Router<Arc<Coordinator>> {
    Router::new()
        .route("/", get(overview))
        .route("/transactions", get(list))
        .route("/transactions/{gid}", get(detail))
        .route("/transactions/{gid}/act", axum::routing::post(act))
        .route("/login", get(login_form).post(login))
        .route("/logout", axum::routing::post(logout))
}

/// An HTML page (or a redirect) for a request.
type Page = Result<Response, Response>;

fn page(c: &Coordinator, caller: Option<&Caller>, title: &str, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · dtx" }
                style { (PreEscaped(CSS)) }
            }
            body {
                header.top {
                    a.brand href="/" { "dtx" }
                    nav {
                        a href="/" { "Overview" }
                        a href="/transactions?needs_attention=true" { "Needs attention" }
                        a href="/transactions" { "Transactions" }
                        a href="/metrics" { "Metrics" }
                        a href="/api/admin/openapi.json" { "API" }
                    }
                    @if let Some(who) = caller {
                        span.who {
                            (who.name) " · " (if who.is_admin() { "admin" } else { "viewer" })
                            @if !c.config().tokens.is_empty() {
                                " · "
                                form.inline method="post" action="/logout" { button.link type="submit" { "sign out" } }
                            }
                        }
                    }
                }
                main { (body) }
                footer {
                    "store " (c.store().backend())
                    @if c.config().tokens.is_empty() {
                        " · no access token configured: this dashboard answers loopback callers only"
                    }
                }
            }
        }
    };
    markup.into_response()
}

fn message(
    c: &Coordinator,
    caller: Option<&Caller>,
    status: StatusCode,
    title: &str,
    text: &str,
) -> Response {
    let mut r = page(
        c,
        caller,
        title,
        html! { h1 { (title) } p.error { (text) } p { a href="/" { "Back to the overview" } } },
    );
    *r.status_mut() = status;
    r
}

fn api_error(c: &Coordinator, caller: Option<&Caller>, e: ApiError) -> Response {
    let title = match e.status() {
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::CONFLICT => "Not possible now",
        s if s.is_client_error() => "Bad request",
        _ => "Unavailable",
    };
    message(c, caller, e.status(), title, e.message())
}

/// Who is asking, or the answer for those who may not look.
fn viewer(c: &Coordinator, headers: &HeaderMap, peer: SocketAddr) -> Result<Caller, Response> {
    auth::identify(c.config(), headers, peer).map_err(|d| denied(c, d))
}

fn denied(c: &Coordinator, d: Denied) -> Response {
    match d {
        Denied::Unauthenticated => Redirect::to("/login").into_response(),
        Denied::NotLoopback => message(
            c,
            None,
            StatusCode::FORBIDDEN,
            "Loopback only",
            "No access token is configured, so the dashboard answers callers on this host only. Configure tokens (DTX_ADMIN_TOKEN, DTX_VIEWER_TOKEN or [[tokens]] in the config file) to open it to others.",
        ),
        Denied::NotAdmin => message(
            c,
            None,
            StatusCode::FORBIDDEN,
            "Admin token needed",
            "You are signed in with a viewer token: actions need an admin token.",
        ),
    }
}

fn status_badge(s: GlobalStatus) -> Markup {
    html! { span class={ "badge s-" (s.as_str()) } { (s.as_str()) } }
}

fn op_badge(s: OpStatus) -> Markup {
    html! { span class={ "badge o-" (s.as_str()) } { (s.as_str()) } }
}

fn age(seconds: i64) -> String {
    match seconds {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} d", s / 86_400),
    }
}

fn tx_table(rows: &[Summary], empty: &str) -> Markup {
    html! {
        @if rows.is_empty() {
            p.muted { (empty) }
        } @else {
            table.list {
                thead { tr { th { "gid" } th { "mode" } th { "status" } th { "age" } th { "calls" } th { "why" } } }
                tbody {
                    @for r in rows {
                        tr {
                            td { a.gid href={ "/transactions/" (r.gid) } { (r.gid) } }
                            td { (r.trans_type.as_str()) }
                            td { (status_badge(r.status)) }
                            td title=(r.created_at) { (age(r.age_s)) }
                            td.num { (r.attempts) }
                            td.why {
                                @if let Some(a) = &r.needs_attention { span.attention { (a) } }
                                @else if let Some(rb) = &r.rollback_reason { (rb) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Bars of finished transactions per minute over the last hour, as inline SVG.
fn chart(buckets: &[MinuteBucket], now: i64) -> Markup {
    let first = (now / 60_000 - 59) * 60_000;
    let mut per_minute = [(0i64, 0i64); 60];
    for b in buckets {
        let i = (b.minute - first) / 60_000;
        if (0..60).contains(&i) {
            per_minute[i as usize] = (b.succeeded, b.failed);
        }
    }
    let max = per_minute
        .iter()
        .map(|(s, f)| s + f)
        .max()
        .unwrap_or(0)
        .max(1);
    let (w, h) = (600.0, 120.0);
    let bar = w / 60.0;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="chart" viewBox="0 0 {w} {}" role="img" aria-label="transactions finished per minute, last hour">"#,
        h + 14.0
    );
    for (i, (s, f)) in per_minute.iter().enumerate() {
        let x = i as f64 * bar;
        let hs = *s as f64 / max as f64 * h;
        let hf = *f as f64 / max as f64 * h;
        let _ = write!(
            svg,
            r#"<g><title>{} min ago: {s} succeeded, {f} failed</title><rect class="ok" x="{x:.1}" y="{:.1}" width="{:.1}" height="{hs:.1}"/><rect class="bad" x="{x:.1}" y="{:.1}" width="{:.1}" height="{hf:.1}"/></g>"#,
            59 - i,
            h - hs,
            bar - 1.0,
            h - hs - hf,
            bar - 1.0,
        );
    }
    let _ = write!(
        svg,
        r#"<text x="0" y="{}">60 min ago</text><text x="{w}" y="{}" text-anchor="end">now · peak {max}/min</text></svg>"#,
        h + 12.0,
        h + 12.0
    );
    PreEscaped(svg)
}

async fn overview(
    State(c): State<Arc<Coordinator>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Page {
    let caller = viewer(&c, &headers, peer)?;
    let (o, now) = admin::load_overview(&c)
        .await
        .map_err(|e| api_error(&c, Some(&caller), e))?;
    let statuses = [
        GlobalStatus::Prepared,
        GlobalStatus::Submitted,
        GlobalStatus::Aborting,
        GlobalStatus::Succeeded,
        GlobalStatus::Failed,
    ];
    let types = [
        TransType::Saga,
        TransType::Tcc,
        TransType::Xa,
        TransType::Msg,
    ];
    let count = |s: GlobalStatus, t: Option<TransType>| -> i64 {
        o.counts
            .iter()
            .filter(|sc| sc.status == s && t.is_none_or(|t| sc.trans_type == t))
            .map(|sc| sc.count)
            .sum()
    };
    let attention: Vec<Summary> = o.needs_attention.iter().map(|r| summary(r, now)).collect();
    let retrying: Vec<Summary> = o.retrying.iter().map(|r| summary(r, now)).collect();
    let oldest: Vec<Summary> = o.oldest.iter().map(|r| summary(r, now)).collect();
    let body = html! {
        h1 { "Overview" }
        section.cards {
            div class={ "card" @if !attention.is_empty() { " alert" } } {
                div.big { (attention.len()) @if attention.len() == 20 { "+" } }
                a href="/transactions?needs_attention=true" { "need attention" }
            }
            @for s in statuses {
                div.card {
                    div.big { (count(s, None)) }
                    a href={ "/transactions?status=" (s.as_str()) } { (s.as_str()) }
                }
            }
        }
        table.counts {
            thead { tr { th { "mode" } @for s in statuses { th { (s.as_str()) } } } }
            tbody {
                @for t in types {
                    tr {
                        td { (t.as_str()) }
                        @for s in statuses {
                            td.num { a href={ "/transactions?status=" (s.as_str()) "&trans_type=" (t.as_str()) } { (count(s, Some(t))) } }
                        }
                    }
                }
            }
        }
        h2 { "Finished per minute" span.legend { span.ok { "■ succeeded" } " " span.bad { "■ failed" } } }
        (chart(&o.finished, now))
        h2 #stuck { "Needs attention" }
        p.muted { "Automatic retries have stopped; each waits for an operator." }
        (tx_table(&attention, "Nothing waits for an operator."))
        h2 { "Retrying after errors" }
        (tx_table(&retrying, "No transaction is retrying after an error."))
        h2 { "Oldest not final" }
        (tx_table(&oldest, "Every transaction is final."))
    };
    Ok(page(&c, Some(&caller), "Overview", body))
}

async fn list(
    State(c): State<Arc<Coordinator>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Page {
    let caller = viewer(&c, &headers, peer)?;
    let p: ListParams =
        serde_urlencoded::from_str(query.as_deref().unwrap_or("")).map_err(|e| {
            message(
                &c,
                Some(&caller),
                StatusCode::BAD_REQUEST,
                "Bad filter",
                &e.to_string(),
            )
        })?;
    let result = admin::list_page(&c, &p).await;
    let (rows, next, error) = match result {
        Ok(page) => (page.transactions, page.next, None),
        Err(e) if e.status().is_client_error() => (Vec::new(), None, Some(e.message().to_owned())),
        Err(e) => return Err(api_error(&c, Some(&caller), e)),
    };
    let next_link = next.map(|cursor| {
        let mut q = form_urlencoded(&p);
        q.push_str("&after=");
        q.push_str(&urlencode(&cursor));
        format!("/transactions?{q}")
    });
    let sel = |cur: Option<&str>, v: &str| cur == Some(v);
    let body = html! {
        h1 { "Transactions" }
        form.filters #filters method="get" action="/transactions" {
            label { "status "
                select #filter-status name="status" {
                    option value="" { "any" }
                    @for s in ["prepared", "submitted", "aborting", "succeeded", "failed"] {
                        option value=(s) selected[sel(p.status.map(|s| s.as_str()), s)] { (s) }
                    }
                }
            }
            label { "mode "
                select #filter-type name="trans_type" {
                    option value="" { "any" }
                    @for t in ["saga", "tcc", "xa", "msg"] {
                        option value=(t) selected[sel(p.trans_type.map(|t| t.as_str()), t)] { (t) }
                    }
                }
            }
            label { "gid prefix " input #filter-gid-prefix type="text" name="gid_prefix" size="18" value=[p.gid_prefix.as_deref()]; }
            label { "participant host " input #filter-host type="text" name="host" size="16" placeholder="host:port" value=[p.host.as_deref()]; }
            label { "older than (s) " input #filter-older type="number" min="0" name="older_than_s" size="6" value=[p.older_than_s]; }
            label { "attention "
                select #filter-needs-attention name="needs_attention" {
                    option value="" { "any" }
                    option value="true" selected[p.needs_attention == Some(true)] { "needs attention" }
                    option value="false" selected[p.needs_attention == Some(false)] { "not flagged" }
                }
            }
            button #apply-filters type="submit" { "Filter" }
            a href="/transactions" { "clear" }
        }
        @if let Some(e) = &error { p.error { (e) } }
        (tx_table(&rows, "No transaction matches."))
        @if let Some(link) = &next_link { p { a #next-page href=(link) { "Next page →" } } }
    };
    Ok(page(&c, Some(&caller), "Transactions", body))
}

fn urlencode(s: &str) -> String {
    serde_urlencoded::to_string([("", s)])
        .map(|q| q.trim_start_matches('=').to_owned())
        .unwrap_or_default()
}

/// The filter of a listing as a query string (without the cursor).
fn form_urlencoded(p: &ListParams) -> String {
    let pairs: Vec<(&str, String)> = [
        ("status", p.status.map(|s| s.as_str().to_owned())),
        ("trans_type", p.trans_type.map(|t| t.as_str().to_owned())),
        ("needs_attention", p.needs_attention.map(|b| b.to_string())),
        ("gid_prefix", p.gid_prefix.clone()),
        ("host", p.host.clone()),
        ("older_than_s", p.older_than_s.map(|s| s.to_string())),
        ("limit", p.limit.map(|l| l.to_string())),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k, v)))
    .collect();
    serde_urlencoded::to_string(pairs).unwrap_or_default()
}

fn action_form(
    gid: &str,
    action: &str,
    label: &str,
    id: &str,
    extra: Markup,
    can_act: bool,
) -> Markup {
    html! {
        form.action method="post" action={ "/transactions/" (gid) "/act" } id={ "form-" (id) } {
            input type="hidden" name="action" value=(action);
            (extra)
            input type="text" name="reason" required placeholder="reason (kept in the audit log)" size="34" maxlength="1000";
            button type="submit" id=(id) disabled[!can_act] { (label) }
        }
    }
}

async fn detail(
    State(c): State<Arc<Coordinator>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(gid): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Page {
    let caller = viewer(&c, &headers, peer)?;
    let d: Detail = admin::load_detail(&c, &gid)
        .await
        .map_err(|e| api_error(&c, Some(&caller), e))?;
    let flash = query
        .as_deref()
        .and_then(|q| q.strip_prefix("done="))
        .map(|a| a.replace('_', " "));
    let s = &d.summary;
    let can_act = caller.is_admin();
    let open = !s.status.is_final();
    let may_abort = OperatorAction::ForceAbort.allowed(s.status, s.trans_type);
    let max_ms = d
        .attempts
        .iter()
        .map(|a| a.duration_ms)
        .max()
        .unwrap_or(0)
        .max(1);
    let body = html! {
        @if let Some(f) = &flash { p.flash #flash { "Done: " (f) ". The coordinator picks it up at once." } }
        h1 { span.gid #gid { (s.gid) } " " span #status { (status_badge(s.status)) } }
        @if let Some(a) = &s.needs_attention { p.attention #attention { "Needs attention: " (a) } }
        @if let Some(r) = &s.rollback_reason { p { "Rolled back because: " (r) } }
        table.fields {
            tr { th { "mode" } td { (s.trans_type.as_str()) } th { "calls" } td { (s.attempts) } }
            tr { th { "created" } td { (s.created_at) " (" (age(s.age_s)) " ago)" } th { "updated" } td { (s.updated_at) } }
            tr { th { "finished" } td { (s.finished_at.as_deref().unwrap_or("—")) } th { "next look" } td { (s.next_attempt_at.as_deref().unwrap_or("—")) } }
            tr { th { "timeout" } td { (d.timeout_at.as_deref().unwrap_or("—")) } th { "lease" } td { (d.lease_owner.as_deref().unwrap_or("—")) @if let Some(u) = &d.lease_until { " until " (u) } } }
            tr { th { "version" } td { (d.version) } th { "rules" } td { code { (d.options.get("policy").map(|p| p.to_string()).unwrap_or_default()) } } }
        }
        @if open {
            section.actions #actions {
                h2 { "Actions" }
                @if !can_act { p.muted { "Signed in with a viewer token: actions need an admin token." } }
                (action_form(&s.gid, "retry_now", "Retry now", "retry-now", html! {}, can_act))
                p.muted { "Clears the attention flag, gives every pending op a fresh budget and tries failed phase-2 ops again." }
                @if may_abort {
                    (action_form(&s.gid, "force_abort", "Force abort", "force-abort", html! {}, can_act))
                    p.muted { "Rolls back: runs the compensations / cancels / rollbacks of what may have run (not a bare status change)." }
                }
                (action_form(&s.gid, "set_budget", "Change budget", "set-budget", html! {
                    input type="number" name="retry_limit" min="1" max="100000" placeholder="calls per op" size="8";
                    input type="number" name="max_age_s" min="1" placeholder="max age (s)" size="8";
                }, can_act))
            }
        }
        h2 { "Branch ops" }
        table.list #branches {
            thead { tr { th { "branch" } th { "op" } th { "target" } th { "status" } th { "calls" } th { "last error" } th { "payload" } @if open { th { "" } } } }
            tbody {
                @for b in &d.branches {
                    tr {
                        td { (b.branch_id) }
                        td { (b.op.as_str()) }
                        td.target { (b.target) }
                        td { (op_badge(b.status)) }
                        td.num { (b.attempts) @if let Some(l) = b.retry_limit { " / " (l) } }
                        td.err { (b.last_error.as_deref().unwrap_or("")) @if let Some(n) = &b.next_attempt_at { br; span.muted { "next " (n) } } }
                        td { details { summary { (b.payload.len()) " B" } pre { (b.payload) } } }
                        @if open {
                            td {
                                @if (b.status == OpStatus::Pending && (b.attempts > 0 || b.last_error.is_some())) || (b.status == OpStatus::Failed && b.op.is_phase_two()) {
                                    @let key = format!("{}/{}", b.branch_id, b.op.as_str());
                                    details.opacts {
                                        summary { "act" }
                                        (action_form(&s.gid, "retry_op", "Retry this op", &format!("retry-op-{}-{}", b.branch_id, b.op.as_str()), html! { input type="hidden" name="branch" value=(key); }, can_act))
                                        (action_form(&s.gid, "mark_done", "Mark done", &format!("mark-done-{}-{}", b.branch_id, b.op.as_str()), html! { input type="hidden" name="branch" value=(key); }, can_act))
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Timeline" }
        @if !c.config().record_all_calls {
            p.muted { "Failed calls, retries and the success ending them. A call that succeeded at its op's first attempt is not listed: its op above says so (DTX_RECORD_ALL_CALLS=true lists every call)." }
        }
        @if d.attempts.is_empty() { p.muted { "No call recorded." } } @else {
            table.list #timeline {
                thead { tr { th { "started" } th { "branch / op" } th { "outcome" } th { "duration" } th { "error" } th { "by" } } }
                tbody {
                    @for a in &d.attempts {
                        tr {
                            td { (a.started_at) }
                            td { (a.branch_id) " / " (a.op) }
                            td { span class={ "badge a-" (a.outcome) } { (a.outcome) } }
                            td.num {
                                span.dur style={ "width:" ((a.duration_ms * 80 / max_ms).max(1)) "px" } {}
                                " " (a.duration_ms) " ms"
                            }
                            td.err { (a.error.as_deref().unwrap_or("")) }
                            td.muted { (a.owner) }
                        }
                    }
                }
            }
        }
        h2 { "Audit trail" }
        @if d.audit.is_empty() { p.muted { "No operator action." } } @else {
            table.list #audit {
                thead { tr { th { "when" } th { "who" } th { "action" } th { "on" } th { "why" } } }
                tbody {
                    @for e in &d.audit {
                        tr { td { (e.at) } td { (e.actor) } td { (e.action) } td { (e.detail.as_deref().unwrap_or("")) } td { (e.reason) } }
                    }
                }
            }
        }
    };
    Ok(page(&c, Some(&caller), &d.summary.gid, body))
}

/// An action form, as posted.
#[derive(Debug, Deserialize)]
struct ActForm {
    action: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    branch: Option<String>,
    #[serde(default)]
    retry_limit: Option<String>,
    #[serde(default)]
    max_age_s: Option<String>,
    #[serde(default)]
    confirm: Option<String>,
}

impl ActForm {
    fn action(&self) -> Result<OperatorAction, String> {
        let number = |v: &Option<String>, name: &str| -> Result<Option<u64>, String> {
            match v.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) => v
                    .parse()
                    .map(Some)
                    .map_err(|_| format!("{name}: `{v}` is not a whole number")),
            }
        };
        let op = || -> Result<(String, Op), String> {
            let b = self.branch.as_deref().unwrap_or("");
            let (branch_id, op) = b.rsplit_once('/').ok_or("branch: missing")?;
            let op: Op = op.parse().map_err(|_| format!("op: `{op}` is not an op"))?;
            Ok((branch_id.to_owned(), op))
        };
        Ok(match self.action.as_str() {
            "retry_now" => OperatorAction::RetryNow,
            "force_abort" => OperatorAction::ForceAbort,
            "retry_op" => {
                let (branch_id, op) = op()?;
                OperatorAction::RetryOp { branch_id, op }
            }
            "mark_done" => {
                let (branch_id, op) = op()?;
                OperatorAction::MarkDone { branch_id, op }
            }
            "set_budget" => OperatorAction::SetBudget {
                retry_limit: number(&self.retry_limit, "retry_limit")?
                    .map(|l| u32::try_from(l).unwrap_or(u32::MAX)),
                max_age_ms: number(&self.max_age_s, "max_age_s")?.map(|s| s.saturating_mul(1000)),
            },
            other => return Err(format!("action: `{other}` is not an action")),
        })
    }
}

/// What an action will do, in words, for the confirmation page.
fn explain(a: &OperatorAction) -> String {
    match a {
        OperatorAction::RetryNow => "retry now: clear the attention flag, give every pending op a fresh retry budget, try failed phase-2 ops again, and drive the transaction at once".into(),
        OperatorAction::RetryOp { branch_id, op } => format!("retry the op {op} of branch {branch_id} now, with a fresh retry budget"),
        OperatorAction::ForceAbort => "force abort: roll the transaction back, running the compensations / cancels / rollbacks of every branch that may have run".into(),
        OperatorAction::MarkDone { branch_id, op } => format!("mark the op {op} of branch {branch_id} as succeeded WITHOUT calling the participant: say so only if its effect happened or was done by hand"),
        OperatorAction::SetBudget { .. } => format!("change the retry budget ({}) and drive the transaction at once", a.detail().unwrap_or_default()),
    }
}

/// A form post from another site is refused (the cookie is `SameSite=Strict` too).
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin.split_once("://").map(|(_, h)| h);
    origin_host.is_some() && origin_host == host
}

async fn act(
    State(c): State<Arc<Coordinator>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(gid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Page {
    let caller = auth::admin(c.config(), &headers, peer).map_err(|d| denied(&c, d))?;
    if !same_origin(&headers) {
        return Err(message(
            &c,
            Some(&caller),
            StatusCode::FORBIDDEN,
            "Refused",
            "this form was posted from another site",
        ));
    }
    let bad = |m: String| {
        message(
            &c,
            Some(&caller),
            StatusCode::BAD_REQUEST,
            "Bad request",
            &m,
        )
    };
    let form: ActForm = serde_urlencoded::from_bytes(&body).map_err(|e| bad(e.to_string()))?;
    let action = form.action().map_err(bad)?;
    if form.reason.trim().is_empty() {
        return Err(bad("reason: say why (it is kept in the audit log)".into()));
    }
    if form.confirm.as_deref() != Some("yes") {
        let body = html! {
            h1 { "Confirm" }
            p.confirm #confirm-text { "On " a href={ "/transactions/" (gid) } { (gid) } ": " (explain(&action)) "." }
            p { "Reason: " q { (form.reason) } }
            form.action method="post" action={ "/transactions/" (gid) "/act" } {
                @for (k, v) in [("action", Some(form.action.as_str())), ("reason", Some(form.reason.as_str())), ("branch", form.branch.as_deref()), ("retry_limit", form.retry_limit.as_deref()), ("max_age_s", form.max_age_s.as_deref())] {
                    @if let Some(v) = v { input type="hidden" name=(k) value=(v); }
                }
                input type="hidden" name="confirm" value="yes";
                button #confirm.danger type="submit" { "Yes, " (action.as_str().replace('_', " ")) }
                " "
                a href={ "/transactions/" (gid) } { "Cancel" }
            }
        };
        return Ok(page(&c, Some(&caller), "Confirm", body));
    }
    let name = action.as_str();
    admin::perform(&c, &caller, &gid, action, &form.reason, None)
        .await
        .map_err(|e| api_error(&c, Some(&caller), e))?;
    Ok(Redirect::to(&format!("/transactions/{gid}?done={name}")).into_response())
}

async fn login_form(State(c): State<Arc<Coordinator>>) -> Response {
    page(&c, None, "Sign in", login_body(None))
}

fn login_body(error: Option<&str>) -> Markup {
    html! {
        h1 { "Sign in" }
        @if let Some(e) = error { p.error { (e) } }
        form method="post" action="/login" {
            label { "Access token " input #token type="password" name="token" required size="40" autocomplete="current-password"; }
            " "
            button #sign-in type="submit" { "Sign in" }
        }
        p.muted { "A viewer token shows the dashboard; an admin token also allows actions." }
    }
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(
    State(c): State<Arc<Coordinator>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    let token = serde_urlencoded::from_bytes::<LoginForm>(&body)
        .map(|f| f.token)
        .unwrap_or_default();
    let mut h = HeaderMap::new();
    if let Ok(v) = format!("Bearer {token}").parse() {
        h.insert(header::AUTHORIZATION, v);
    }
    match auth::identify(c.config(), &h, peer) {
        Ok(_) if !c.config().tokens.is_empty() => (
            [(
                header::SET_COOKIE,
                format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"),
            )],
            Redirect::to("/"),
        )
            .into_response(),
        Ok(_) => Redirect::to("/").into_response(),
        Err(Denied::NotLoopback) => denied(&c, Denied::NotLoopback),
        Err(_) => {
            let mut r = page(
                &c,
                None,
                "Sign in",
                login_body(Some("That token is not configured.")),
            );
            *r.status_mut() = StatusCode::UNAUTHORIZED;
            r
        }
    }
}

async fn logout() -> Response {
    (
        [(
            header::SET_COOKIE,
            format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
        )],
        Redirect::to("/login"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_become_actions() {
        let f: ActForm = serde_urlencoded::from_str(
            "action=mark_done&reason=fixed+by+hand&branch=b-1%2Fcompensate",
        )
        .unwrap();
        assert_eq!(
            f.action().unwrap(),
            OperatorAction::MarkDone {
                branch_id: "b-1".into(),
                op: Op::Compensate
            }
        );
        let f: ActForm =
            serde_urlencoded::from_str("action=set_budget&reason=x&retry_limit=9&max_age_s=")
                .unwrap();
        assert_eq!(
            f.action().unwrap(),
            OperatorAction::SetBudget {
                retry_limit: Some(9),
                max_age_ms: None
            }
        );
        let f: ActForm =
            serde_urlencoded::from_str("action=set_budget&reason=x&retry_limit=lots").unwrap();
        assert!(f.action().unwrap_err().contains("retry_limit"));
        let f: ActForm = serde_urlencoded::from_str("action=drop_table&reason=x").unwrap();
        assert!(f.action().is_err());
    }

    #[test]
    fn cross_site_posts_are_refused() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "127.0.0.1:36789".parse().unwrap());
        assert!(same_origin(&h), "no Origin: a non-browser client");
        h.insert(header::ORIGIN, "http://127.0.0.1:36789".parse().unwrap());
        assert!(same_origin(&h));
        h.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        assert!(!same_origin(&h));
    }
}
