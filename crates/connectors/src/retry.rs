//! The one place that decides whether a failed push is worth retrying, and how the
//! failure reads in `remarks`. 2xx → delivered; 408, 409, 429 and 5xx → retry
//! (honouring `Retry-After`); every other 4xx → permanent rejection; transport
//! errors → retry.

use std::time::Duration;

use crate::Outcome;

/// Classifies a non-2xx response. `message` is the most useful part of the body
/// (an API's error message), already extracted by the connector.
pub fn classify_status(system: &str, status: u16, retry_after: Option<Duration>, message: &str) -> Outcome {
    let detail = if message.is_empty() { String::new() } else { format!(": {message}") };
    match status {
        408 | 409 | 429 | 500..=599 => {
            let after = retry_after.map(|d| format!(", retry after {}", human(d))).unwrap_or_default();
            Outcome::Retry {
                http_status: Some(status),
                reason: format!("HTTP {status} from {system}{detail}{after}"),
                retry_after,
            }
        }
        _ => Outcome::Reject {
            http_status: Some(status),
            reason: format!("HTTP {status} from {system}{detail} — not retried"),
        },
    }
}

/// Classifies a request that got no response at all.
pub fn classify_transport(system: &str, err: &reqwest::Error) -> Outcome {
    let reason = if err.is_timeout() {
        format!("timed out waiting for {system}")
    } else if err.is_connect() {
        // The innermost cause says "Connection refused", "dns error", …
        let mut cause: &dyn std::error::Error = err;
        while let Some(next) = cause.source() {
            cause = next;
        }
        format!("could not connect to {system}: {}", cause.to_string().to_lowercase())
    } else {
        format!("request to {system} failed: {err}")
    };
    Outcome::Retry { http_status: None, reason, retry_after: None }
}

/// `Retry-After` as delay-seconds (the HTTP-date form is rare from APIs and is
/// treated as absent, which falls back to backoff).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    v.parse::<f64>().ok().filter(|s| s.is_finite() && *s >= 0.0).map(Duration::from_secs_f64)
}

/// Picks a readable message out of an error body: JSON `error.message`,
/// `message`, `error` (string), else the start of the text.
pub fn body_message(body: &str) -> String {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(body) {
        let candidates = [&v["error"]["message"], &v["message"], &v["error"]];
        if let Some(s) = candidates.iter().find_map(|c| c.as_str()) {
            return s.to_string();
        }
    }
    let text = body.trim();
    let mut cut: String = text.chars().take(200).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    cut
}

fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_classify_as_documented() {
        for s in [408, 409, 429, 500, 502, 503] {
            assert!(matches!(classify_status("x", s, None, ""), Outcome::Retry { .. }), "{s}");
        }
        for s in [400, 401, 403, 404, 410, 422] {
            assert!(matches!(classify_status("x", s, None, ""), Outcome::Reject { .. }), "{s}");
        }
    }

    #[test]
    fn remarks_read_well() {
        let Outcome::Retry { reason, .. } = classify_status("stripe", 429, Some(Duration::from_secs(2)), "") else {
            panic!()
        };
        assert_eq!(reason, "HTTP 429 from stripe, retry after 2s");
        let Outcome::Reject { reason, .. } = classify_status("crm", 400, None, "email invalid") else { panic!() };
        assert_eq!(reason, "HTTP 400 from crm: email invalid — not retried");
        assert_eq!(body_message(r#"{"error":{"message":"No such customer"}}"#), "No such customer");
        assert_eq!(body_message("plain text"), "plain text");
    }
}
