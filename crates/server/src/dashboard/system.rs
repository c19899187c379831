//! One system's page: its queue, the deletions the mass-delete breaker holds (either
//! side, with Release and Discard), and its last reconcile runs (counts per class,
//! API calls, duration), each with a detail view of its samples. Holds are settled
//! through the API's own handler (`POST /v1/holds/{id}/release|discard`).

use axum::extract::{Path, State};
use axum::response::{Html, Redirect};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::Value;
use syncflow_store::{now_ms, Hold, ReconcileRun};

use super::views::{self, age, at, badge};
use super::{back_to, DashError, Page};
use crate::AppState;

/// Runs listed on the page.
const RUNS: usize = 20;
/// The drift classes, in the order the columns show them.
const CLASSES: &[&str] = &["missing_remote", "missing_local", "field_drift", "orphan_link", "duplicate"];

fn count(run: &ReconcileRun, key: &str) -> i64 {
    run.counts[key].as_i64().unwrap_or(0)
}

fn holds_table(rows: &[Hold], back: &str) -> Markup {
    html! {
        @if rows.is_empty() { p.muted #no-holds { "No deletions are held." } } @else {
            table #holds {
                thead { tr {
                    th.num { "Id" } th title="inward: the system deleted, the hub has not applied it; outward: the hub deleted, the system has not been told" { "Side" }
                    th { "Deleted by" } th { "Record" } th { "External id" } th { "Why" } th { "Held" } th {}
                } }
                tbody {
                    @for h in rows {
                        tr data-hold=(h.id) {
                            td.num { (h.id) }
                            td { (badge(&h.side)) }
                            td { (h.origin) }
                            td { a.mono href={ "/ui/records?q=" (h.record_id) } { (h.record_id) } }
                            td.mono { (h.external_id) }
                            td.remarks { (h.reason) }
                            td.muted { (at(h.created_at)) }
                            td {
                                form.inline method="post" action={ "/ui/holds/" (h.id) "/release" } {
                                    input type="hidden" name="back" value=(back);
                                    button.danger type="submit" data-action="release" title="Apply the deletion" { "Release" }
                                }
                                " "
                                form.inline method="post" action={ "/ui/holds/" (h.id) "/discard" } {
                                    input type="hidden" name="back" value=(back);
                                    button type="submit" data-action="discard" title="Keep the record" { "Discard" }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn runs_table(rows: &[ReconcileRun]) -> Markup {
    html! {
        @if rows.is_empty() { p.muted #no-runs { "No reconcile runs yet (" code { "syncflow reconcile --system NAME" } ")." } } @else {
            table #runs {
                thead { tr {
                    th.num { "Run" } th { "Started" } th { "Trigger" } th { "Status" } th.num { "Checked" }
                    @for c in CLASSES { th.num { (c.replace('_', " ")) } }
                    th.num { "Repaired" } th.num { "API calls" } th.num { "Duration" } th {}
                } }
                tbody {
                    @for r in rows {
                        tr data-run=(r.id) {
                            td.num { a href={ "/ui/reconcile/runs/" (r.id) } { (r.id) } }
                            td.muted { (at(r.started_at)) }
                            td { (r.trigger) @if r.repair { " " span.muted { "repair" } } }
                            td { (badge(&r.status)) }
                            td.num { (count(r, "checked")) }
                            @for c in CLASSES { td.num data-class=(c) { (count(r, c)) } }
                            td.num { (count(r, "repaired")) }
                            td.num { @match r.api_calls { Some(n) => (n), None => "–" } }
                            td.num { @match r.duration_ms { Some(ms) => (format!("{:.1}s", ms as f64 / 1000.0)), None => "–" } }
                            td { a.muted href={ "/v1/reconcile/runs/" (r.id) } { "JSON" } }
                        }
                    }
                }
            }
        }
    }
}

pub(crate) async fn page(State(state): State<AppState>, Path(name): Path<String>) -> Page {
    let system = state.system(&name)?.clone();
    let here = format!("/ui/systems/{name}");
    let store = &state.store;
    let queue = store.queue_stats().await?.remove(&name).unwrap_or_default();
    let holds = store.holds(Some(&name), Some("held"), 200).await?;
    let runs = store.reconcile_runs(Some(&name), None, RUNS).await?;
    let now = now_ms();
    let before = html! {
        p {
            span.muted { (system.kind) } " · "
            a href={ "/ui/deliveries?system=" (name) } { "deliveries" } " · "
            a href={ "/ui/inbox?system=" (name) } { "inbox" }
        }
    };
    let live = html! {
        div.stats {
            div.stat #queue { b { (queue.depth()) } span { "queued" } }
            div.stat { b { @match queue.oldest_unfinished_at { Some(t) => (age((now - t) as f64 / 1000.0)), None => "–" } } span { "oldest pending" } }
            div.stat #held { b { (holds.len()) } span { "held deletions" } }
        }
        @if !holds.is_empty() {
            p.error #flagged {
                "Flagged: the mass-delete breaker holds " (holds.len()) " deletion(s). Release applies them; discard keeps the records."
            }
        }
        h2 { "Held deletions" }
        (holds_table(&holds, &here))
        h2 { "Reconcile runs " span.muted { "· newest first" } }
        (runs_table(&runs))
    };
    let body = views::page(&format!("System {name}"), "", &here, !state.tokens.is_empty(), before, live);
    Ok(Html(body.into_string()))
}

fn sample_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(sample_text).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

/// One run: its counts and samples (the first 50 records found, with what was done).
pub(crate) async fn run(State(state): State<AppState>, Path(id): Path<String>) -> Page {
    let run_id: i64 = id.parse().map_err(|_| DashError::not_found(format!("no run `{id}`")))?;
    let r = state.store.reconcile_run(run_id).await?.ok_or_else(|| DashError::not_found(format!("no run `{id}`")))?;
    let here = format!("/ui/reconcile/runs/{run_id}");
    let samples = r.samples.as_array().cloned().unwrap_or_default();
    let before = html! {
        p {
            a href={ "/ui/systems/" (r.system) } { "← " (r.system) } " · " (r.entity) " · " (r.trigger)
            @if r.repair { " · repair" } " · " a href={ "/v1/reconcile/runs/" (r.id) } { "JSON" }
        }
    };
    let live = html! {
        div.stats {
            div.stat { b { (badge(&r.status)) } span { "status" } }
            div.stat { b { (count(&r, "checked")) } span { "checked" } }
            @for c in CLASSES { div.stat data-class=(c) { b { (count(&r, c)) } span { (c.replace('_', " ")) } } }
            div.stat { b { (count(&r, "in_flight")) } span { "in flight (skipped)" } }
            div.stat { b { (count(&r, "repaired")) } span { "repaired" } }
            div.stat { b { @match r.api_calls { Some(n) => (n), None => "–" } } span { "API calls" } }
            div.stat { b { @match r.duration_ms { Some(ms) => (format!("{:.1}s", ms as f64 / 1000.0)), None => "–" } } span { "duration" } }
        }
        @if let Some(e) = &r.error { p.error { (e) } }
        h2 { "Samples" }
        @if samples.is_empty() { p.muted { "No drift found." } } @else {
            table #samples {
                thead { tr { th { "Class" } th { "External id" } th { "Record" } th { "Fields" } th { "Repair" } } }
                tbody {
                    @for s in &samples {
                        tr data-class=(sample_text(&s["class"])) {
                            td { (sample_text(&s["class"])) }
                            td.mono { (sample_text(&s["external_id"])) }
                            td { @if let Some(id) = s["record_id"].as_str() { a.mono href={ "/ui/records?q=" (id) } { (id) } } }
                            td.mono { (sample_text(&s["fields"])) }
                            td.remarks { (sample_text(&s["repair"])) }
                        }
                    }
                }
            }
        }
    };
    let body = views::page(&format!("Reconcile run {run_id}"), "", &here, !state.tokens.is_empty(), before, live);
    Ok(Html(body.into_string()))
}

#[derive(Deserialize)]
pub(crate) struct Back {
    back: Option<String>,
}

/// Releases or discards a hold through the API's handler, then goes back.
pub(crate) async fn settle(
    State(state): State<AppState>,
    Path(id): Path<String>,
    release: bool,
    Form(form): Form<Back>,
) -> Result<Redirect, DashError> {
    let _hold = crate::reconcile::settle(State(state), Path(id), release).await?;
    Ok(back_to(form.back.as_deref()))
}
