//! Shared test support: an app over a fresh store, driven with `oneshot`.

#![allow(dead_code)]

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::Value;
use syncflow_server::{router, ApiTokens, AppState, ClientSpec, Clients, LiveSettings};
use syncflow_store::testing::TestStore;
use tower::ServiceExt;

pub mod hub;

/// Full-access token used by `App::admin_*`.
pub const ADMIN: &str = "admin-token";

pub struct App {
    pub state: AppState,
    pub router: Router,
    _store: Option<TestStore>,
}

pub fn client(id: &str, token: &str, entities: Option<&[&str]>) -> ClientSpec {
    ClientSpec {
        id: id.into(),
        token: Some(token.into()),
        entities: entities.map(|l| l.iter().map(|s| s.to_string()).collect()),
        ..Default::default()
    }
}

impl App {
    pub fn new(t: TestStore, clients: Vec<ClientSpec>) -> App {
        Self::with_live(t, clients, LiveSettings::default())
    }

    pub fn with_live(t: TestStore, clients: Vec<ClientSpec>, live: LiveSettings) -> App {
        let tokens = ApiTokens::parse(ADMIN);
        let clients = Clients::new(clients, &tokens).expect("valid clients");
        let state = AppState::new(t.store.clone(), tokens).with_clients(clients).with_live(live);
        App { router: router(state.clone()), state, _store: Some(t) }
    }

    /// An app over a prepared state (systems configured, for example).
    pub fn from_state(state: AppState) -> App {
        App { router: router(state.clone()), state, _store: None }
    }

    /// An app with no tokens at all (open, as on loopback by default).
    pub fn open(t: TestStore) -> App {
        let state = AppState::new(t.store.clone(), ApiTokens::default());
        App { router: router(state.clone()), state, _store: Some(t) }
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req.header(header::CONTENT_TYPE, "application/json").body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        (status, value)
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> (StatusCode, Value) {
        self.send(Method::POST, path, token, Some(&body.to_string())).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        self.send(Method::GET, path, token, None).await
    }

    pub async fn head_seq(&self) -> i64 {
        self.state.store.head_seq().await.unwrap()
    }
}

/// Serves `router` on a real loopback socket (for streaming tests); returns its
/// base URL. The server task ends with the test's runtime.
pub async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _server = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    format!("http://{addr}")
}
