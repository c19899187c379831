//! Read-only aggregates for the operator dashboard: delivery attempts per system and
//! minute, inbox counts by outcome, and the newest inbox events. Nothing here writes.
//!
//! Invariant kept here: every query is bounded — activity reads at most the newest
//! `ACTIVITY_SCAN` attempt rows (by primary key), listings are limited — so a page
//! render costs the same on a young hub and on one with years of history.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::Row;

use crate::deliveries::{decode_delivery, DELIVERY_COLUMNS};
use crate::inbox::{decode as decode_inbox, INBOX_COLUMNS};
use crate::{on_read, Delivery, DeliveryStatus, InboxEvent, Result, Store};

/// Most attempt rows the activity query reads (the newest ones).
pub const ACTIVITY_SCAN: i64 = 200_000;

/// Delivery attempts of one system in one minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MinuteActivity {
    pub attempts: i64,
    pub delivered: i64,
    /// Attempts that ended retrying or dead.
    pub failed: i64,
    /// Attempts answered HTTP 429.
    pub throttled: i64,
}

/// Which deliveries `Store::recent_deliveries` lists (all filters optional).
#[derive(Debug, Clone, Default)]
pub struct RecentDeliveries {
    pub system: Option<String>,
    pub status: Option<DeliveryStatus>,
    pub record_id: Option<String>,
    /// Only deliveries updated at or after this time (ms).
    pub since_ms: Option<i64>,
    /// Only deliveries with a smaller id (paging backwards).
    pub before_id: Option<i64>,
    pub limit: usize,
}

impl Store {
    /// Deliveries newest first (by id), filtered.
    pub async fn recent_deliveries(&self, f: &RecentDeliveries) -> Result<Vec<Delivery>> {
        on_read!(self, |pool, _d| {
            let rows = sqlx::query(&format!(
                "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE ($1 = '' OR system = $1) AND ($2 = '' OR status = $2) \
                 AND ($3 = '' OR record_id = $3) AND updated_at >= $4 AND id < $5 ORDER BY id DESC LIMIT {}",
                f.limit.clamp(1, 1000)
            ))
            .bind(f.system.clone().unwrap_or_default())
            .bind(f.status.map(|s| s.as_str().to_string()).unwrap_or_default())
            .bind(f.record_id.clone().unwrap_or_default())
            .bind(f.since_ms.unwrap_or(0))
            .bind(f.before_id.unwrap_or(i64::MAX))
            .fetch_all(pool)
            .await?;
            rows.iter().map(decode_delivery).collect()
        })
    }

    /// Attempts per system in each of the `minutes` whole minutes ending at `now_ms`,
    /// oldest first.
    pub async fn delivery_activity(
        &self,
        now_ms: i64,
        minutes: usize,
    ) -> Result<BTreeMap<String, Vec<MinuteActivity>>> {
        // The window is (now - minutes, now]: an attempt made in the very millisecond of
        // `now_ms` falls in the last bucket, not one past it.
        let since = now_ms - minutes as i64 * 60_000 + 1;
        let rows = on_read!(self, |pool, _d| {
            sqlx::query(
                "SELECT d.system, (a.at - $1) / 60000, COUNT(*), \
                 SUM(CASE WHEN a.outcome = 'delivered' THEN 1 ELSE 0 END), \
                 SUM(CASE WHEN a.outcome IN ('retrying', 'dead') THEN 1 ELSE 0 END), \
                 SUM(CASE WHEN a.http_status = 429 THEN 1 ELSE 0 END) \
                 FROM delivery_attempts a JOIN deliveries d ON d.id = a.delivery_id \
                 WHERE a.id > (SELECT COALESCE(MAX(id), 0) FROM delivery_attempts) - $2 AND a.at >= $1 \
                 GROUP BY 1, 2",
            )
            .bind(since)
            .bind(ACTIVITY_SCAN)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| {
                Ok((
                    r.try_get::<String, _>(0)?,
                    r.try_get::<i64, _>(1)?,
                    MinuteActivity {
                        attempts: r.try_get(2)?,
                        delivered: r.try_get(3)?,
                        failed: r.try_get(4)?,
                        throttled: r.try_get(5)?,
                    },
                ))
            })
            .collect::<Result<Vec<_>>>()?
        });
        let mut out: BTreeMap<String, Vec<MinuteActivity>> = BTreeMap::new();
        for (system, minute, counts) in rows {
            let series = out.entry(system).or_insert_with(|| vec![MinuteActivity::default(); minutes]);
            if let Some(slot) = usize::try_from(minute).ok().and_then(|m| series.get_mut(m)) {
                *slot = counts;
            }
        }
        Ok(out)
    }

    /// Inbox rows per (system, outcome).
    pub async fn inbox_counts(&self) -> Result<Vec<(String, String, i64)>> {
        on_read!(self, |pool, _d| {
            sqlx::query("SELECT system, outcome, COUNT(*) FROM inbox GROUP BY system, outcome ORDER BY system, outcome")
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
                .collect()
        })
    }

    /// The newest inbox events, newest first, optionally of one system and outcome.
    pub async fn inbox_latest(
        &self,
        system: Option<&str>,
        outcome: Option<&str>,
        limit: usize,
    ) -> Result<Vec<InboxEvent>> {
        on_read!(self, |pool, _d| {
            let rows = sqlx::query(&format!(
                "SELECT {INBOX_COLUMNS} FROM inbox WHERE ($1 = '' OR system = $1) AND ($2 = '' OR outcome = $2) \
                 ORDER BY id DESC LIMIT {}",
                limit.clamp(1, 1000)
            ))
            .bind(system.unwrap_or_default().to_string())
            .bind(outcome.unwrap_or_default().to_string())
            .fetch_all(pool)
            .await?;
            rows.iter().map(decode_inbox).collect()
        })
    }
}
