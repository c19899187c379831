//! A record's path: find it by hub id, e-mail or an external id, then show what
//! happened to it — its changes (with origin), each delivery per system with its
//! outcome, remarks and attempts, the inward events that named it, its links and
//! its conflicts. The history is the store's own (`Store::record_history`, shared
//! with the API and the CLI); this page only lays it out.

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::response::Html;
use maud::{html, Markup};
use serde::Deserialize;
use syncflow_core::{Entity, FieldType, ENTITIES};
use syncflow_store::{ConflictFilter, ListQuery, RecordHistory};

use super::conflicts;
use super::deliveries::encode;
use super::views::{self, at, badge};
use super::{DashError, Page};
use crate::AppState;

/// Most matches listed for a search that finds several records.
const MAX_MATCHES: usize = 50;

#[derive(Deserialize, Default)]
pub(crate) struct Search {
    q: Option<String>,
}

/// Records a search term names: a hub id, an e-mail, or an external id in some system.
async fn find(state: &AppState, q: &str) -> Result<Vec<(&'static Entity, String)>, DashError> {
    if let Some(entity) = ENTITIES.iter().copied().find(|e| q.starts_with(&format!("{}_", e.id_prefix))) {
        return Ok(vec![(entity, q.to_string())]);
    }
    let mut found = Vec::new();
    if q.contains('@') {
        for entity in ENTITIES.iter().copied() {
            for field in entity.fields.iter().filter(|f| matches!(f.ty, FieldType::Email)) {
                let query = ListQuery {
                    limit: MAX_MATCHES,
                    include_deleted: true,
                    filters: vec![(field.name, q.to_string())],
                    ..Default::default()
                };
                found.extend(state.store.list(entity, &query).await?.data.into_iter().map(|r| (entity, r.id)));
            }
        }
        if !found.is_empty() {
            return Ok(found);
        }
    }
    for system in state.systems.iter().map(|s| &s.name) {
        for entity in ENTITIES.iter().copied() {
            if let Some(link) = state.store.link_by_external_id(system, entity.name, q).await? {
                // Several systems may use the same external id for one record.
                if !found.iter().any(|(e, id)| e.name == entity.name && *id == link.record_id) {
                    found.push((entity, link.record_id));
                }
            }
        }
    }
    Ok(found)
}

pub(crate) async fn page(State(state): State<AppState>, Query(search): Query<Search>) -> Page {
    let q = search.q.as_deref().map(str::trim).unwrap_or("");
    let here = if q.is_empty() { "/ui/records".to_string() } else { format!("/ui/records?q={}", encode(q)) };
    let form = html! {
        form.filters method="get" action="/ui/records" {
            label { "Hub id, e-mail or external id"
                input #record-search type="search" name="q" value=(q) size="40" placeholder="cust_…, ada@example.com, cus_…";
            }
            button type="submit" { "Find" }
        }
    };
    let live = if q.is_empty() {
        html! { p.muted { "Search for a record to follow its path through the hub and every system." } }
    } else {
        let matches = find(&state, q).await?;
        match matches.as_slice() {
            [] => html! { p #no-record { "No record matches " code { (q) } "." } },
            [(entity, id)] => match state.store.record_history(entity, id).await? {
                None => html! { p #no-record { "No " (entity.name) " " code { (id) } " in the hub." } },
                Some(h) => {
                    let filter = ConflictFilter { record_id: Some(id.clone()), limit: 200, ..Default::default() };
                    let record_conflicts = state.store.conflicts(&filter).await?;
                    history(&h, conflicts::table(&record_conflicts, &here))
                }
            },
            many => html! {
                p { (many.len()) " records match:" }
                ul #matches { @for (entity, id) in many {
                    li { (entity.name) " " a.mono href={ "/ui/records?q=" (encode(id)) } { (id) } }
                } }
            },
        }
    };
    let body = views::page("Record path", "/ui/records", &here, !state.tokens.is_empty(), form, live);
    Ok(Html(body.into_string()))
}

fn history(h: &RecordHistory, conflicts: Markup) -> Markup {
    let mut by_system: BTreeMap<&str, Vec<&syncflow_store::DeliveryHistory>> = BTreeMap::new();
    for d in &h.deliveries {
        by_system.entry(d.delivery.system.as_str()).or_default().push(d);
    }
    html! {
        section.card #record data-record=(h.record_id) {
            p {
                b { (h.entity) } " " code { (h.record_id) }
                @match &h.record {
                    Some(r) => {
                        " · version " (r.version)
                        @if r.deleted_at.is_some() { " " (badge("deleted")) }
                    }
                    None => { " " span.muted { "(row gone; its changes remain)" } }
                }
            }
            @if let Some(r) = &h.record {
                pre.mono { (serde_json::to_string_pretty(&r.fields).unwrap_or_default()) }
            }
        }
        h2 { "Links" }
        @if h.links.is_empty() { p.muted { "Not linked to any system yet." } } @else {
            table #links {
                thead { tr { th { "System" } th { "External id" } th.num { "Synced version" } th { "Updated" } } }
                tbody { @for l in &h.links {
                    tr data-system=(l.system) {
                        td { (l.system) } td.mono { (l.external_id) }
                        td.num { @if let Some(v) = l.synced_version { (v) } } td.muted { (at(l.updated_at)) }
                    }
                } }
            }
        }
        h2 { "Changes" }
        table #record-changes {
            thead { tr { th.num { "Seq" } th { "Op" } th.num { "Version" } th { "Origin" } th { "At" } } }
            tbody { @for c in &h.changes {
                tr { td.num { (c.seq) } td { (c.op.as_str()) } td.num { (c.version) } td { (c.origin) } td.muted { (c.created_at) } }
            } }
        }
        h2 { "Deliveries" }
        @if by_system.is_empty() { p.muted { "No deliveries." } }
        @for (system, deliveries) in &by_system {
            section.card.system-deliveries data-system=(system) {
                b { (system) }
                table {
                    thead { tr { th.num { "Id" } th.num { "Change" } th { "Op" } th { "Outcome" } th.num { "Attempts" } th { "Remarks" } th { "Attempt history" } } }
                    tbody { @for d in deliveries {
                        tr data-delivery=(d.delivery.id) {
                            td.num { a href={ "/ui/deliveries/" (d.delivery.id) } { (d.delivery.id) } }
                            td.num { (d.delivery.change_seq) }
                            td { (d.delivery.op) }
                            td { (badge(d.delivery.status.as_str())) }
                            td.num { (d.delivery.attempts) }
                            td { @if let Some(r) = &d.delivery.remarks { (r) } }
                            td.muted {
                                @for a in &d.attempts {
                                    div { "#" (a.attempt) " " (a.outcome)
                                        @if let Some(s) = a.http_status { " (" (s) ")" }
                                        " " (at(a.at)) }
                                }
                            }
                        }
                    } }
                }
            }
        }
        h2 { "Inward events" }
        @if h.inward.is_empty() { p.muted { "None." } } @else {
            table #record-inward {
                thead { tr { th { "Received" } th { "System" } th { "Event" } th { "Type" } th { "Source" } th { "Outcome" } th { "Remarks" } } }
                tbody { @for e in &h.inward {
                    tr {
                        td.muted { (at(e.received_at)) } td { (e.system) } td.mono { (e.event_id) } td { (e.event_type) }
                        td { (e.source) } td { (badge(e.outcome.as_str())) } td { @if let Some(r) = &e.remarks { (r) } }
                    }
                } }
            }
        }
        h2 { "Conflicts" }
        (conflicts)
        h2 { "Timeline" }
        table #timeline {
            thead { tr { th { "At" } th { "What" } th { "System" } th { "Outcome" } th { "Reference" } th { "Remarks" } } }
            tbody { @for t in h.timeline() {
                tr {
                    td.muted { (t.at) } td { (t.kind) } td { (t.system) } td { (t.outcome) } td.mono { (t.reference) }
                    td { @if let Some(r) = &t.remarks { (r) } }
                }
            } }
        }
    }
}
