//! The request log: one `info` line per request with method, route template,
//! status, milliseconds and request id, and nothing secret. Its own test binary:
//! a thread-scoped subscriber sees every event only when no other test in the
//! process registers the same callsites first.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::{App, ADMIN};
use tower::ServiceExt;

async fn app_with_tokens() -> App {
    App::new(syncflow_store::testing::sqlite().await, vec![])
}

/// Captures formatted log output.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn one_log_line_per_request_without_secrets() {
    let app = app_with_tokens().await;
    let out = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(out.clone())
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let req = Request::builder()
        .uri("/v1/customers/cust_secretid?include_deleted=true")
        .header("authorization", format!("Bearer {ADMIN}"))
        .header("x-request-id", "rid-42")
        .body(Body::empty())
        .unwrap();
    let resp = app.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let (s, _) = app.send(Method::GET, "/v1/customers?email=hidden%40example.com", Some(ADMIN), None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = app.send(Method::GET, "/v1/nope", Some("not-the-token"), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    app.send(Method::GET, "/healthz", None, None).await;

    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(" request")).collect();
    assert_eq!(lines.len(), 3, "one line per API request, none for probes:\n{text}");
    let first = lines[0];
    for part in ["INFO", "method=GET", "route=/v1/customers/{id}", "status=404", "ms=", "request_id=rid-42"] {
        assert!(first.contains(part), "{part} missing from {first}");
    }
    assert!(lines[1].contains("status=200") && lines[1].contains("route=/v1/customers "), "{}", lines[1]);
    assert!(lines[2].contains("status=401") && lines[2].contains("route=unmatched"), "{}", lines[2]);
    for secret in [ADMIN, "not-the-token", "hidden", "secretid"] {
        assert!(!text.contains(secret), "{secret} in the log:\n{text}");
    }
}
