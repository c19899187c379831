//! `GET /v1/changes`: the change log, paged by sequence number, optionally filtered
//! by entity or record, oldest first (`order=desc`: newest first), with
//! long-polling (`wait=30s`, oldest-first only): when nothing is new the request
//! is held until a change commits or the wait ends.
//!
//! Invariant kept here: `next_after` never passes a change the caller has not
//! been given (or filtered out), so following it misses nothing.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use syncflow_store::ChangeQuery;

use crate::auth::Principal;
use crate::extract::QueryMap;
use crate::{ApiError, AppState};

pub(crate) const MAX_CHANGES: i64 = 1000;

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/v1/changes", get(list))
}

const PARAMS: &[&str] = &["after", "limit", "wait", "entity", "record_id", "order"];

/// Parses `wait`: `30s`, `1500ms`, `1m` or bare seconds, at most `max`.
pub(crate) fn parse_wait(text: Option<&str>, max: Duration) -> Result<Duration, ApiError> {
    let Some(text) = text.map(str::trim) else {
        return Ok(Duration::ZERO);
    };
    let (digits, unit_ms) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000)
    } else {
        (text, 1000)
    };
    match digits.trim().parse::<u64>() {
        Ok(n) if Duration::from_millis(n.saturating_mul(unit_ms)) <= max => Ok(Duration::from_millis(n * unit_ms)),
        _ => Err(ApiError::BadRequest(format!(
            "`wait` must be a duration such as 30s or 500ms, at most {}s",
            max.as_secs()
        ))),
    }
}

async fn list(State(state): State<AppState>, principal: Principal, q: QueryMap) -> Result<Json<Value>, ApiError> {
    if let Some((name, _)) = q.0.iter().find(|(k, _)| !PARAMS.contains(&k.as_str())) {
        return Err(ApiError::BadRequest(format!("unknown query parameter `{name}`; use {}", PARAMS.join(", "))));
    }
    let desc = crate::catalog::descending(&q, false)?;
    let after = q.number("after", 0, 0, i64::MAX)?;
    let limit = q.number("limit", 100, 1, MAX_CHANGES)?;
    let wait = parse_wait(q.get("wait"), state.live.max_wait)?;
    if desc && !wait.is_zero() {
        return Err(ApiError::BadRequest("`wait` needs order=asc: only new changes can be waited for".into()));
    }
    // A full-access caller without a filter sees every row, whatever its entity;
    // anyone else sees only the entities it names and may see.
    let entities = match (&principal, q.get("entity")) {
        (Principal::Operator, None) => None,
        (p, requested) => Some(p.entity_filter(requested)?),
    };
    let record_id = q.get("record_id").map(str::to_string);
    if desc || record_id.is_some() {
        // A filtered or newest-first read: pages with `has_more`, no long-poll
        // unless oldest first (then it waits like the plain log does).
        let query = ChangeQuery {
            after: q.get("after").map(|_| after),
            limit: limit as usize,
            descending: desc,
            record_id,
            entities: entities.map(|list| list.iter().map(|e| e.name).collect()),
        };
        let deadline = Instant::now() + wait;
        let mut wake = state.store.subscribe();
        let mut shutdown = state.shutdown_receiver();
        loop {
            wake.borrow_and_update();
            let (changes, has_more) = state.store.change_list(&query).await?;
            if !changes.is_empty() || Instant::now() >= deadline || *shutdown.borrow() {
                // Oldest first, the cursor always moves on (a follower keeps polling);
                // newest first it ends with the last page.
                let next = match (changes.last(), desc) {
                    (Some(c), false) => Some(c.seq),
                    (None, false) => Some(after),
                    (Some(c), true) if has_more => Some(c.seq),
                    _ => None,
                };
                return Ok(Json(json!({"object": "list", "data": changes, "has_more": has_more, "next_after": next})));
            }
            let nap = deadline.saturating_duration_since(Instant::now()).min(state.live.fallback_poll);
            tokio::select! {
                _ = wake.changed() => {}
                _ = shutdown.changed() => {}
                _ = tokio::time::sleep(nap) => {}
            }
        }
    }
    let deadline = Instant::now() + wait;
    let mut wake = state.store.subscribe();
    let mut shutdown = state.shutdown_receiver();
    loop {
        // Seen before reading, so a commit between the read and the wait wakes us.
        wake.borrow_and_update();
        let page = state.store.change_page(after, limit as usize, entities.as_deref()).await?;
        let now = Instant::now();
        if !page.changes.is_empty() || now >= deadline || *shutdown.borrow() {
            return Ok(Json(json!({
                "object": "list",
                "data": page.changes,
                "next_after": page.next_after,
            })));
        }
        let nap = (deadline - now).min(state.live.fallback_poll);
        tokio::select! {
            _ = wake.changed() => {}
            _ = shutdown.changed() => {}
            _ = tokio::time::sleep(nap) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_parse() {
        let max = Duration::from_secs(60);
        assert_eq!(parse_wait(None, max).unwrap(), Duration::ZERO);
        assert_eq!(parse_wait(Some("30s"), max).unwrap(), Duration::from_secs(30));
        assert_eq!(parse_wait(Some("30"), max).unwrap(), Duration::from_secs(30));
        assert_eq!(parse_wait(Some("250ms"), max).unwrap(), Duration::from_millis(250));
        assert_eq!(parse_wait(Some("1m"), max).unwrap(), Duration::from_secs(60));
        for bad in ["61s", "2m", "soon", "-1s", ""] {
            assert!(parse_wait(Some(bad), max).is_err(), "{bad}");
        }
    }
}
