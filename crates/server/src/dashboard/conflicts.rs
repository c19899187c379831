//! The conflicts inbox: same-field conflicts between the hub and a system, both
//! values side by side, resolved with one click. Resolution goes through the API's
//! own handler (`POST /v1/conflicts/{id}/resolve`), so it behaves the same.

use axum::extract::{Path, Query, State};
use axum::response::{Html, Redirect};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::{Map, Value};
use syncflow_store::{Conflict, ConflictFilter};

use super::views::{self, at, badge};
use super::{back_to, DashError, Page};
use crate::extract::JsonObject;
use crate::AppState;

#[derive(Deserialize, Default)]
pub(crate) struct Filter {
    status: Option<String>,
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "(empty)".into(),
        other => other.to_string(),
    }
}

/// Open (or resolved) conflicts, optionally of one record: for the record page too.
pub(crate) fn table(rows: &[Conflict], back: &str) -> Markup {
    html! {
        @if rows.is_empty() { p.muted #no-conflicts { "No conflicts." } } @else {
            table.conflicts {
                thead { tr {
                    th.num { "Id" } th { "System" } th { "Record" } th { "Field" } th { "Hub value" } th { "System's value" }
                    th { "Policy" } th { "Status" } th { "Seen" } th {}
                } }
                tbody {
                    @for c in rows {
                        tr data-conflict=(c.id) {
                            td.num { (c.id) }
                            td { (c.system) }
                            td { a.mono href={ "/ui/records?q=" (c.record_id) } { (c.record_id) } }
                            td.mono { (c.field) }
                            td.hub { (value_text(&c.hub_value)) }
                            td.external { (value_text(&c.external_value)) }
                            td { (c.policy) }
                            td {
                                (badge(&c.status))
                                @if let Some(w) = &c.winner { " " span.muted { (w) " kept" } }
                            }
                            td.muted { (at(c.created_at)) }
                            td {
                                @if c.status == "open" {
                                    form.inline method="post" action={ "/ui/conflicts/" (c.id) "/resolve" } {
                                        input type="hidden" name="back" value=(back);
                                        button type="submit" name="keep" value="hub" data-action="keep-hub" { "Keep hub value" }
                                        " "
                                        button type="submit" name="keep" value="external" data-action="keep-external" {
                                            "Keep " (c.system) "'s"
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub(crate) async fn page(State(state): State<AppState>, Query(f): Query<Filter>) -> Page {
    let status = match f.status.as_deref() {
        None | Some("") | Some("open") => "open",
        Some("resolved") => "resolved",
        Some(other) => return Err(DashError::not_found(format!("no conflict status `{other}`"))),
    };
    let filter = ConflictFilter { status: Some(status.into()), limit: 200, ..Default::default() };
    let rows = state.store.conflicts(&filter).await?;
    let here = format!("/ui/conflicts?status={status}");
    let before = html! {
        p {
            @if status == "open" { b { "Open" } } @else { a href="/ui/conflicts?status=open" { "Open" } }
            " · "
            @if status == "resolved" { b { "Resolved" } } @else { a href="/ui/conflicts?status=resolved" { "Resolved" } }
        }
    };
    let live = table(&rows, &here);
    let body = views::page("Conflicts", "/ui/conflicts", &here, !state.tokens.is_empty(), before, live);
    Ok(Html(body.into_string()))
}

#[derive(Deserialize)]
pub(crate) struct Resolve {
    keep: String,
    back: Option<String>,
}

pub(crate) async fn resolve(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Form(form): Form<Resolve>,
) -> Result<Redirect, DashError> {
    if form.keep != "hub" && form.keep != "external" {
        return Err(DashError::not_found(format!("cannot keep `{}`", form.keep)));
    }
    let mut body = Map::new();
    body.insert("keep".into(), Value::String(form.keep));
    // The resolved conflict and record (the API's answer) are not shown: the page
    // the operator returns to lists the conflict as resolved.
    let _resolved = crate::conflicts::resolve(State(state), Path(id), JsonObject(body)).await?;
    Ok(back_to(form.back.as_deref()))
}
