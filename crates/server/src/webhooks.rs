//! `POST /webhooks/{system}`: inward events pushed by external systems. Outside
//! the bearer-token layer; the connector authenticates each request by its
//! signature. Keeps invariants 7 and 8: a 2xx only once the event is durable in
//! the inbox, a 400 (and nothing stored) for a bad signature or body.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use syncflow_connectors::WebhookError as Refused;
use syncflow_engine::{WebhookError, WebhookReceipt};

use crate::{ApiError, AppState};

pub(crate) async fn receive(
    State(state): State<AppState>,
    Path(system): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<WebhookReceipt>, ApiError> {
    let pipeline = state
        .pipelines
        .get(&system)
        .ok_or_else(|| ApiError::NotFound(format!("no system named `{system}` receives webhooks")))?;
    match pipeline.webhook(&headers, &body).await {
        Ok(receipt) => Ok(Json(receipt)),
        Err(WebhookError::Refused(e @ (Refused::Signature(_) | Refused::Payload(_)))) => {
            tracing::warn!(system = %system, error = %e, "webhook refused");
            Err(ApiError::BadRequest(e.to_string()))
        }
        Err(WebhookError::Refused(e @ Refused::NotConfigured)) => {
            Err(ApiError::NotFound(format!("system `{system}`: {e}")))
        }
        Err(WebhookError::Store(e)) => {
            // Not the sender's fault: it should retry (Stripe does, for days).
            tracing::error!(system = %system, error = %e, "webhook not recorded");
            Err(ApiError::Unavailable("the event could not be recorded; retry later".into()))
        }
    }
}
