//! Deliveries: a filtered list (system, status, record, time), one delivery with its
//! remarks and attempt history, retry of one dead letter and replay of all of a
//! system's (the button says how many first).

use axum::extract::{Path, Query, State};
use axum::response::{Html, Redirect};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;
use syncflow_store::{now_ms, Delivery, DeliveryStatus, RecentDeliveries};

use super::views::{self, at, badge};
use super::{back_to, DashError, Page};
use crate::AppState;

/// Rows per page.
const PAGE_SIZE: usize = 100;

/// The time filter's choices: (query value, label, minutes).
const WINDOWS: &[(&str, &str, i64)] = &[
    ("15m", "last 15 minutes", 15),
    ("1h", "last hour", 60),
    ("24h", "last 24 hours", 1440),
    ("7d", "last 7 days", 10_080),
];

#[derive(Deserialize, Default)]
pub(crate) struct Filter {
    system: Option<String>,
    status: Option<String>,
    record: Option<String>,
    since: Option<String>,
    before: Option<i64>,
}

fn non_empty(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

impl Filter {
    fn query(&self, before: Option<i64>) -> String {
        let mut parts = Vec::new();
        for (k, v) in
            [("system", &self.system), ("status", &self.status), ("record", &self.record), ("since", &self.since)]
        {
            if let Some(v) = non_empty(v) {
                parts.push(format!("{k}={}", encode(v)));
            }
        }
        if let Some(b) = before {
            parts.push(format!("before={b}"));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!("?{}", parts.join("&"))
        }
    }
}

/// Percent-encodes a query value.
pub(crate) fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

pub(crate) async fn list(State(state): State<AppState>, Query(f): Query<Filter>) -> Page {
    let status = match non_empty(&f.status) {
        None => None,
        Some(s) => Some(DeliveryStatus::parse(s).ok_or_else(|| DashError::not_found(format!("no status `{s}`")))?),
    };
    let since_minutes = non_empty(&f.since).and_then(|s| WINDOWS.iter().find(|w| w.0 == s)).map(|w| w.2);
    let query = RecentDeliveries {
        system: non_empty(&f.system).map(str::to_string),
        status,
        record_id: non_empty(&f.record).map(str::to_string),
        since_ms: since_minutes.map(|m| now_ms() - m * 60_000),
        before_id: f.before,
        limit: PAGE_SIZE + 1,
    };
    let mut rows = state.store.recent_deliveries(&query).await?;
    let more = rows.len() > PAGE_SIZE;
    rows.truncate(PAGE_SIZE);
    let dead = match non_empty(&f.system) {
        Some(system) => state.store.queue_stats().await?.get(system).map_or(0, |q| q.dead),
        None => 0,
    };
    let here = format!("/ui/deliveries{}", f.query(f.before));
    let filters = filter_form(&state, &f);
    let live = html! {
        @if let Some(system) = non_empty(&f.system) {
            @if dead > 0 {
                form.inline method="post" action={ "/ui/systems/" (system) "/replay" } {
                    input type="hidden" name="back" value=(here);
                    button.danger #replay-all type="submit" { "Replay all " (dead) " dead letters of " (system) }
                }
            }
        }
        (table(&rows, &here))
        @if more {
            p { a href={ "/ui/deliveries" (f.query(rows.last().map(|d| d.id))) } { "Older deliveries →" } }
        }
    };
    let body = views::page("Deliveries", "/ui/deliveries", &here, !state.tokens.is_empty(), filters, live);
    Ok(Html(body.into_string()))
}

fn filter_form(state: &AppState, f: &Filter) -> Markup {
    let system = non_empty(&f.system).unwrap_or("");
    let status = non_empty(&f.status).unwrap_or("");
    let since = non_empty(&f.since).unwrap_or("");
    html! {
        form.filters method="get" action="/ui/deliveries" {
            label { "System" select name="system" {
                option value="" { "any" }
                @for s in state.systems.iter() { option value=(s.name) selected[s.name == system] { (s.name) } }
            } }
            label { "Status" select name="status" {
                option value="" { "any" }
                @for s in DeliveryStatus::ALL { option value=(s.as_str()) selected[s.as_str() == status] { (s.as_str()) } }
            } }
            label { "Record id" input type="text" name="record" value=(non_empty(&f.record).unwrap_or("")) placeholder="cust_…"; }
            label { "Updated" select name="since" {
                option value="" { "any time" }
                @for (v, label, _) in WINDOWS { option value=(v) selected[*v == since] { (label) } }
            } }
            button type="submit" { "Filter" }
        }
    }
}

fn table(rows: &[Delivery], back: &str) -> Markup {
    html! {
        @if rows.is_empty() {
            p.muted #no-deliveries { "No deliveries match." }
        } @else {
            table #deliveries {
                thead { tr {
                    th.num { "Id" } th { "System" } th { "Record" } th { "Op" } th { "Status" } th.num { "Attempts" }
                    th.num { "HTTP" } th { "Remarks" } th { "Updated" } th {}
                } }
                tbody {
                    @for d in rows {
                        tr data-delivery=(d.id) data-status=(d.status.as_str()) {
                            td.num { a href={ "/ui/deliveries/" (d.id) } { (d.id) } }
                            td { (d.system) }
                            td { a.mono href={ "/ui/records?q=" (d.record_id) } { (d.record_id) } }
                            td { (d.op) }
                            td { (badge(d.status.as_str())) }
                            td.num { (d.attempts) }
                            td.num { @if let Some(h) = d.http_status { (h) } }
                            td { @if let Some(r) = &d.remarks { (r) } }
                            td.muted { (at(d.updated_at)) }
                            td { @if d.status == DeliveryStatus::Dead { (retry_button(d.id, back)) } }
                        }
                    }
                }
            }
        }
    }
}

fn retry_button(id: i64, back: &str) -> Markup {
    html! {
        form.inline method="post" action={ "/ui/deliveries/" (id) "/retry" } {
            input type="hidden" name="back" value=(back);
            button.danger type="submit" data-action="retry" { "Replay" }
        }
    }
}

pub(crate) async fn show(State(state): State<AppState>, Path(raw): Path<String>) -> Page {
    let id: i64 = raw.parse().map_err(|_| DashError::not_found(format!("no delivery `{raw}`")))?;
    let d = state.store.delivery(id).await?.ok_or_else(|| DashError::not_found(format!("no delivery {id}")))?;
    let attempts = state.store.attempts(id).await?;
    let here = format!("/ui/deliveries/{id}");
    let live = html! {
        section.card {
            p {
                (badge(d.status.as_str())) " "
                b { (d.system) } " · " (d.entity) " " a.mono href={ "/ui/records?q=" (d.record_id) } { (d.record_id) }
                " · " (d.op) " · change " (d.change_seq) " · " (d.attempts) " attempt(s)"
                @if let Some(x) = &d.external_id { " · external id " code { (x) } }
            }
            @if let Some(r) = &d.remarks { p #remarks { "Remarks: " (r) } }
            p.muted { "Created " (at(d.created_at)) " · updated " (at(d.updated_at))
                @if let Some(f) = d.finished_at { " · finished " (at(f)) } }
            @if d.status == DeliveryStatus::Dead { (retry_button(d.id, &here)) }
        }
        h2 { "Attempt history" }
        @if attempts.is_empty() { p.muted { "No attempts yet." } } @else {
            table #attempts {
                thead { tr { th.num { "#" } th { "Outcome" } th.num { "HTTP" } th { "Remarks" } th.num { "Took" } th { "At" } } }
                tbody {
                    @for a in &attempts {
                        tr {
                            td.num { (a.attempt) }
                            td { (badge(&a.outcome)) }
                            td.num { @if let Some(h) = a.http_status { (h) } }
                            td { @if let Some(r) = &a.remarks { (r) } }
                            td.num { (a.duration_ms) " ms" }
                            td.muted { (at(a.at)) }
                        }
                    }
                }
            }
        }
    };
    let title = format!("Delivery {id}");
    let body = views::page(&title, "/ui/deliveries", &here, !state.tokens.is_empty(), html! {}, live);
    Ok(Html(body.into_string()))
}

#[derive(Deserialize)]
pub(crate) struct Back {
    back: Option<String>,
}

pub(crate) async fn retry(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Form(form): Form<Back>,
) -> Result<Redirect, DashError> {
    let id: i64 = raw.parse().map_err(|_| DashError::not_found(format!("no delivery `{raw}`")))?;
    // A delivery that is no longer dead (replayed meanwhile) is left as it is.
    state.store.retry_delivery(id).await?;
    Ok(back_to(form.back.as_deref()))
}

pub(crate) async fn replay_system(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Form(form): Form<Back>,
) -> Result<Redirect, DashError> {
    state.system(&name)?;
    let n = state.store.replay(&name, DeliveryStatus::Dead).await?;
    tracing::info!(system = %name, replayed = n, "dead letters replayed from the dashboard");
    Ok(back_to(form.back.as_deref()))
}
