//! The overview: each system's state, queue, dead letters, last hour of delivery
//! activity, 429s, inward events and poll lag; the change log's head and the
//! dispatcher's lag; catalog counts; the newest changes. Pause and resume.

use axum::extract::{Path, State};
use axum::response::{Html, Redirect};
use maud::{html, Markup};
use syncflow_connectors::ApiUsage;
use syncflow_store::{now_ms, MinuteActivity, QueueStats};

use super::views::{self, age, badge, sparkline};
use super::{DashError, Page};
use crate::AppState;

/// Minutes of history in the sparklines.
const HOUR: usize = 60;
/// A system is failing, or over budget, when its last this-many minutes say so.
const RECENT_MINUTES: usize = 5;

/// What one system is doing, for its badge. `usage`: its API allowance, for kinds
/// that report one (over budget once the hub's share, or the whole, is used).
pub(crate) fn system_state(paused: bool, minutes: &[MinuteActivity], usage: Option<ApiUsage>) -> &'static str {
    let recent = &minutes[minutes.len().saturating_sub(RECENT_MINUTES)..];
    let failed: i64 = recent.iter().map(|m| m.failed).sum();
    let delivered: i64 = recent.iter().map(|m| m.delivered).sum();
    let throttled: i64 = recent.iter().map(|m| m.throttled).sum();
    if paused {
        "paused"
    } else if failed > 0 && failed >= delivered {
        "failing"
    } else if throttled > 0 || usage.is_some_and(|u| u.used >= u.budget.unwrap_or(u.max)) {
        "over budget"
    } else {
        "running"
    }
}

pub(crate) async fn page(State(state): State<AppState>) -> Page {
    let live = live(&state).await?;
    let body = views::page("Overview", "/", "/", !state.tokens.is_empty(), html! {}, live);
    Ok(Html(body.into_string()))
}

async fn live(state: &AppState) -> Result<Markup, DashError> {
    let store = &state.store;
    let now = now_ms();
    let stats = store.queue_stats().await?;
    let paused = store.paused_systems().await?;
    let held = store.held_counts().await?;
    let head = store.head_seq().await?;
    let cursor = store.dispatch_cursor().await?;
    let activity = store.delivery_activity(now, HOUR).await?;
    let mut counts = Vec::new();
    for entity in syncflow_core::ENTITIES.iter().copied() {
        counts.push((entity.plural, store.count(entity).await?));
    }
    let latest = store.changes_after((head - 10).max(0), 10).await?;
    let empty = vec![MinuteActivity::default(); HOUR];

    let mut rows = Vec::new();
    for s in state.systems.iter() {
        let q: QueueStats = stats.get(&s.name).cloned().unwrap_or_default();
        let minutes = activity.get(&s.name).unwrap_or(&empty);
        let last_inward = store.inbox_latest(Some(&s.name), None, 1).await?.into_iter().next();
        let poll_cursor = store.cursor(&format!("poll:{}", s.name)).await?.and_then(|c| c.parse::<i64>().ok());
        let usage = state.pipelines.get(&s.name).and_then(|p| p.connector().api_usage());
        let paused = paused.contains(&s.name);
        let held = held.get(&s.name).copied().unwrap_or(0);
        rows.push(SystemView { config: s, queue: q, minutes, last_inward, poll_cursor, usage, paused, held });
    }

    Ok(html! {
        div.stats {
            div.stat #change-head { b { (head) } span { "change-log head" } }
            div.stat #dispatch-lag {
                b { @if state.systems.is_empty() { "–" } @else { ((head - cursor).max(0)) } }
                span { "dispatch lag (changes)" }
            }
            @for (plural, n) in &counts {
                div.stat data-entity=(plural) { b { (n) } span { (plural) } }
            }
        }
        h2 { "Systems " span.muted { "· activity over the last hour" } }
        @if rows.is_empty() {
            p.muted { "No systems are configured ([[systems]] in the config file)." }
        } @else {
            table #systems {
                thead { tr {
                    th { "System" } th { "State" } th.num { "Queue" } th.num { "Oldest pending" } th.num { "Dead" }
                    th title="Delivered (green) and failed (red) attempts per minute, last hour" { "Deliveries/min" }
                    th.num title="Failed attempts, last hour" { "Errors" } th.num title="HTTP 429 answers, last hour; API quota use where the system reports it" { "429s · quota" }
                    th { "Last inward" } th { "Poll lag" } th {}
                } }
                tbody {
                    @for view in &rows { (system_row(view, now)) }
                }
            }
        }
        h2 { "Newest changes" }
        table #changes {
            thead { tr { th.num { "Seq" } th { "Entity" } th { "Record" } th { "Op" } th.num { "Version" } th { "Origin" } th { "At" } } }
            tbody {
                @for c in latest.iter().rev() {
                    tr data-seq=(c.seq) {
                        td.num { (c.seq) }
                        td { (c.entity) }
                        td { a.mono href={ "/ui/records?q=" (c.record_id) } { (c.record_id) } }
                        td { (c.op.as_str()) }
                        td.num { (c.version) }
                        td { (c.origin) }
                        td.muted { (c.created_at) }
                    }
                }
            }
        }
    })
}

/// What the overview knows about one system.
struct SystemView<'a> {
    config: &'a syncflow_engine::SystemConfig,
    queue: QueueStats,
    minutes: &'a [MinuteActivity],
    last_inward: Option<syncflow_store::InboxEvent>,
    poll_cursor: Option<i64>,
    usage: Option<ApiUsage>,
    paused: bool,
    /// Deletions the mass-delete breaker holds (either side).
    held: i64,
}

fn system_row(v: &SystemView<'_>, now: i64) -> Markup {
    let (s, q, minutes, usage) = (v.config, &v.queue, v.minutes, v.usage);
    let delivered: Vec<i64> = minutes.iter().map(|m| m.delivered).collect();
    let failed: Vec<i64> = minutes.iter().map(|m| m.failed).collect();
    let attempts: i64 = minutes.iter().map(|m| m.attempts).sum();
    let failures: i64 = failed.iter().sum();
    let throttled: i64 = minutes.iter().map(|m| m.throttled).sum();
    let per_min = delivered.last().copied().unwrap_or(0);
    let state = system_state(v.paused, minutes, usage);
    let name = &s.name;
    html! {
        tr data-system=(name) {
            td {
                a href={ "/ui/deliveries?system=" (name) } { b { (name) } } br; span.muted { (s.kind) }
                " · " a.muted href={ "/ui/systems/" (name) } title="held deletions and reconcile runs" { "details" }
                @if v.held > 0 { " " a href={ "/ui/systems/" (name) } { span.badge.held title="deletions held by the mass-delete breaker" { (v.held) " held" } } }
            }
            td.state { (badge(state)) }
            td.num.queue { (q.depth()) }
            td.num { @match q.oldest_unfinished_at { Some(t) => (age((now - t) as f64 / 1000.0)), None => "–" } }
            td.num.dead {
                @if q.dead > 0 {
                    a href={ "/ui/deliveries?system=" (name) "&status=dead" } { (q.dead) }
                } @else { "0" }
            }
            td {
                (sparkline(&[(&failed, "#c01048", "failed"), (&delivered, "#1a7f37", "delivered")],
                    &format!("{name}: delivered (green) and failed (red) attempts per minute, last hour")))
                " " span.mono { (per_min) "/min" }
            }
            td.num { @if attempts == 0 { "–" } @else { (format!("{:.1}%", failures as f64 * 100.0 / attempts as f64)) } }
            td.num {
                (throttled)
                @if let Some(u) = usage {
                    br; span.muted.quota title="API calls used / allowed in the system's window (the hub's budget)" {
                        (u.used) "/" (u.max) @if let Some(b) = u.budget { " (budget " (b) ")" }
                    }
                }
            }
            td {
                @match &v.last_inward {
                    Some(e) => { (age((now - e.received_at) as f64 / 1000.0)) " ago " (badge(e.outcome.as_str())) }
                    None => span.muted { "none" },
                }
            }
            td { @match v.poll_cursor { Some(c) => (age((now / 1000 - c) as f64)), None => span.muted { "–" } } }
            td {
                @if v.paused {
                    form.inline method="post" action={ "/ui/systems/" (name) "/resume" } {
                        button.primary type="submit" data-action="resume" { "Resume" }
                    }
                } @else {
                    form.inline method="post" action={ "/ui/systems/" (name) "/pause" } {
                        button type="submit" data-action="pause" { "Pause" }
                    }
                }
            }
        }
    }
}

pub(crate) async fn set_paused(
    State(state): State<AppState>,
    Path(name): Path<String>,
    paused: bool,
) -> Result<Redirect, DashError> {
    state.system(&name)?;
    state.store.set_paused(&name, paused).await?;
    Ok(Redirect::to("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minute(delivered: i64, failed: i64, throttled: i64) -> MinuteActivity {
        MinuteActivity { attempts: delivered + failed, delivered, failed, throttled }
    }

    #[test]
    fn states_follow_the_last_minutes() {
        let mut m = vec![MinuteActivity::default(); HOUR];
        assert_eq!(system_state(false, &m, None), "running");
        assert_eq!(system_state(true, &m, None), "paused");
        let spent = ApiUsage { used: 900, max: 1000, budget: Some(800) };
        assert_eq!(system_state(false, &m, Some(spent)), "over budget");
        assert_eq!(system_state(false, &m, Some(ApiUsage { budget: None, ..spent })), "running");
        m[HOUR - 1] = minute(1, 0, 1);
        assert_eq!(system_state(false, &m, None), "over budget");
        m[HOUR - 2] = minute(0, 3, 0);
        assert_eq!(system_state(false, &m, None), "failing");
        // Failures long ago do not count.
        let mut old = vec![MinuteActivity::default(); HOUR];
        old[0] = minute(0, 9, 0);
        assert_eq!(system_state(false, &old, None), "running");
    }
}
