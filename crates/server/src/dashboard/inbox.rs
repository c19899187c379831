//! The inbox: inward events (webhooks, polls, backfill) counted by system and
//! outcome, and the newest ones, filterable by both.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::response::{Html, Redirect};
use axum::Form;
use maud::html;
use serde::Deserialize;
use syncflow_store::InboxOutcome;

use super::deliveries::encode;
use super::views::{self, at, badge};
use super::{back_to, DashError, Page};
use crate::AppState;

#[derive(Deserialize, Default)]
pub(crate) struct Filter {
    system: Option<String>,
    outcome: Option<String>,
}

pub(crate) async fn page(State(state): State<AppState>, Query(f): Query<Filter>) -> Page {
    let system = f.system.as_deref().filter(|s| !s.is_empty());
    let outcome = f.outcome.as_deref().filter(|s| !s.is_empty());
    let mut counts: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    for (s, o, n) in state.store.inbox_counts().await? {
        counts.entry(s).or_default().insert(o, n);
    }
    let events = state.store.inbox_latest(system, outcome, 100).await?;
    let mut here = String::from("/ui/inbox");
    let mut sep = '?';
    for (k, v) in [("system", system), ("outcome", outcome)] {
        if let Some(v) = v {
            here.push_str(&format!("{sep}{k}={}", encode(v)));
            sep = '&';
        }
    }
    let live = html! {
        h2 { "Events by system and outcome" }
        @if counts.is_empty() { p.muted { "No inward events yet." } } @else {
            table #inbox-counts {
                thead { tr { th { "System" } @for o in InboxOutcome::ALL { th.num { (o.as_str()) } } th {} } }
                tbody {
                    @for (s, by) in &counts {
                        tr data-system=(s) {
                            td { a href={ "/ui/inbox?system=" (encode(s)) } { (s) } }
                            @for o in InboxOutcome::ALL {
                                td.num {
                                    @match by.get(o.as_str()) {
                                        Some(n) => a href={ "/ui/inbox?system=" (encode(s)) "&outcome=" (o.as_str()) } { (n) },
                                        None => span.muted { "0" },
                                    }
                                }
                            }
                            td {
                                @let stuck: i64 = ["rejected", "dead", "failed"].iter().filter_map(|o| by.get(*o)).sum();
                                @if stuck > 0 && state.systems.iter().any(|c| &c.name == s) {
                                    form.inline method="post" action={ "/ui/systems/" (s) "/inbox/replay" } {
                                        input type="hidden" name="back" value=(here);
                                        button.danger type="submit" data-action="replay-inbox" {
                                            "Apply " (stuck) " rejected/dead again"
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Newest events"
            @if let Some(s) = system { " of " (s) }
            @if let Some(o) = outcome { " (" (o) ")" }
            @if system.is_some() || outcome.is_some() { " · " a href="/ui/inbox" { "all" } }
        }
        @if events.is_empty() { p.muted { "None." } } @else {
            table #inbox-events {
                thead { tr { th { "Received" } th { "System" } th { "Event" } th { "Type" } th { "Source" } th { "Outcome" } th { "Record" } th { "External id" } th { "Remarks" } } }
                tbody {
                    @for e in &events {
                        tr {
                            td.muted { (at(e.received_at)) }
                            td { (e.system) }
                            td.mono { (e.event_id) }
                            td { (e.event_type) }
                            td { (e.source) }
                            td { (badge(e.outcome.as_str())) }
                            td { @if let Some(r) = &e.record_id { a.mono href={ "/ui/records?q=" (r) } { (r) } } }
                            td.mono { @if let Some(x) = &e.external_id { (x) } }
                            td { @if let Some(r) = &e.remarks { (r) } }
                        }
                    }
                }
            }
        }
    };
    let body = views::page("Inbox", "/ui/inbox", &here, !state.tokens.is_empty(), html! {}, live);
    Ok(Html(body.into_string()))
}

#[derive(Deserialize)]
pub(crate) struct Back {
    back: Option<String>,
}

/// Puts a system's rejected and dead inward events back to be applied again.
pub(crate) async fn replay(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Form(form): Form<Back>,
) -> Result<Redirect, DashError> {
    state.system(&name)?;
    let n = state.store.inbox_replay(&name, None).await?;
    tracing::info!(system = %name, requeued = n, "inward events requeued from the dashboard");
    Ok(back_to(form.back.as_deref()))
}
