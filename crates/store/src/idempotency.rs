//! Idempotency keys of REST writes: the first request with a key claims it (an
//! insert on the primary key, so of two concurrent requests exactly one runs), its
//! response is stored, and later requests with the same key and the same request
//! get that response back for 24 hours.

use sqlx::Row;

use crate::deliveries::now_ms;
use crate::{on_write, Result, Store};

/// How long a key is remembered.
pub const IDEMPOTENCY_TTL_MS: i64 = 24 * 60 * 60 * 1000;

/// A claim whose request has not finished after this long is taken to be abandoned.
const ABANDONED_MS: i64 = 60_000;

/// A stored first response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    /// `[(name, value)]` as a JSON object text.
    pub headers: String,
    pub body: String,
}

/// What a request with an `Idempotency-Key` should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyClaim {
    /// The key is new (or expired): run the request, then `idempotency_complete`.
    Run,
    /// The same request ran before: answer with its response.
    Replay(StoredResponse),
    /// The key was used for a different request.
    Mismatch,
    /// The first request with this key has not finished yet.
    InProgress,
}

impl Store {
    /// Claims `key` in `scope` for a request whose hash is `request_hash`.
    pub async fn idempotency_claim(&self, scope: &str, key: &str, request_hash: &str) -> Result<KeyClaim> {
        let now = now_ms();
        let cutoff = now - IDEMPOTENCY_TTL_MS;
        on_write!(self, |pool, _d| {
            let mut tx = pool.begin().await?;
            // Expired keys go first (cheap: indexed by time), so a key can be reused after 24 h.
            sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1").bind(cutoff).execute(&mut *tx).await?;
            let inserted = sqlx::query(
                "INSERT INTO idempotency_keys (scope, idem_key, request_hash, created_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (scope, idem_key) DO NOTHING",
            )
            .bind(scope.to_string())
            .bind(key.to_string())
            .bind(request_hash.to_string())
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let claim = if inserted == 1 {
                KeyClaim::Run
            } else {
                let row = sqlx::query(
                    "SELECT request_hash, status, headers, body, created_at FROM idempotency_keys WHERE scope = $1 AND idem_key = $2",
                )
                .bind(scope.to_string())
                .bind(key.to_string())
                .fetch_one(&mut *tx)
                .await?;
                let hash: String = row.try_get(0)?;
                let status: Option<i64> = row.try_get(1)?;
                let claimed_at: i64 = row.try_get(4)?;
                if hash != request_hash {
                    KeyClaim::Mismatch
                } else if let Some(status) = status {
                    KeyClaim::Replay(StoredResponse {
                        status: u16::try_from(status).unwrap_or(500),
                        headers: row.try_get::<Option<String>, _>(2)?.unwrap_or_else(|| "{}".into()),
                        body: row.try_get::<Option<String>, _>(3)?.unwrap_or_default(),
                    })
                } else if claimed_at < now - ABANDONED_MS {
                    // Its request never finished (the process died): run it again.
                    sqlx::query("UPDATE idempotency_keys SET created_at = $3 WHERE scope = $1 AND idem_key = $2")
                        .bind(scope.to_string())
                        .bind(key.to_string())
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    KeyClaim::Run
                } else {
                    KeyClaim::InProgress
                }
            };
            tx.commit().await?;
            Ok(claim)
        })
    }

    /// Stores the response of the request that claimed `key`.
    pub async fn idempotency_complete(&self, scope: &str, key: &str, response: &StoredResponse) -> Result<()> {
        on_write!(self, |pool, _d| {
            sqlx::query(
                "UPDATE idempotency_keys SET status = $3, headers = $4, body = $5 WHERE scope = $1 AND idem_key = $2",
            )
            .bind(scope.to_string())
            .bind(key.to_string())
            .bind(i64::from(response.status))
            .bind(response.headers.clone())
            .bind(response.body.clone())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Forgets a claimed key whose request failed on our side (5xx), so a retry runs.
    pub async fn idempotency_release(&self, scope: &str, key: &str) -> Result<()> {
        on_write!(self, |pool, _d| {
            sqlx::query("DELETE FROM idempotency_keys WHERE scope = $1 AND idem_key = $2 AND status IS NULL")
                .bind(scope.to_string())
                .bind(key.to_string())
                .execute(pool)
                .await?;
        });
        Ok(())
    }
}
