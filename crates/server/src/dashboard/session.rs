//! Dashboard sessions and cross-site protection.
//!
//! With API tokens configured, an operator logs in with a full-access token; it is
//! kept in an `HttpOnly`, `SameSite=Strict` cookie (base64url-encoded, so any token
//! is a valid cookie value) and checked on every request like a bearer token.
//! Without tokens the dashboard is open, like the API.
//!
//! Every POST must come from this origin: browsers send `Sec-Fetch-Site` (and
//! `Origin` on POSTs), so a request that says it is cross-site, or names another
//! origin, is refused before any handler runs. The strict cookie already keeps
//! cross-site requests unauthenticated; the header check also covers the open
//! (token-less) dashboard and the login form.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use base64::Engine;
use maud::html;
use serde::Deserialize;

use super::views;
use crate::AppState;

const COOKIE: &str = "syncflow_session";
/// How long a dashboard session lasts (seconds).
const SESSION_SECONDS: u32 = 12 * 3600;

/// True when a state-changing request comes from this origin (or from no browser
/// context at all, e.g. `curl`, which cannot carry a victim's cookie).
fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        if !matches!(site.as_bytes(), b"same-origin" | b"none") {
            return false;
        }
    }
    match headers.get(header::ORIGIN) {
        None => true,
        Some(origin) => {
            let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
            let origin = origin.to_str().unwrap_or("");
            let origin_host = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
            !host.is_empty() && origin_host == Some(host)
        }
    }
}

/// The token in the session cookie, if any.
fn session_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .and_then(|(_, value)| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(value).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
}

fn forbidden_cross_site() -> Response {
    let body = views::bare(
        "Refused",
        html! { main { h1 { "Cross-site request refused" } p.error { "This action must be sent from the dashboard itself." } } },
    );
    (StatusCode::FORBIDDEN, Html(body.into_string())).into_response()
}

/// Runs before every dashboard route: the cross-site check for POSTs, then the
/// session check when tokens are configured.
pub(crate) async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if req.method() != Method::GET && req.method() != Method::HEAD && !same_origin(req.headers()) {
        return forbidden_cross_site();
    }
    let path = req.uri().path();
    let public = path == "/ui/login" || path.starts_with("/ui/assets/");
    if public || state.tokens.is_empty() || state.tokens.allows(session_token(req.headers()).as_deref()) {
        let mut resp = next.run(req).await;
        let headers = resp.headers_mut();
        // Pages are never framed by other sites, and never cached (they show live state).
        headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
        headers.insert("referrer-policy", HeaderValue::from_static("same-origin"));
        if !public {
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
        return resp;
    }
    if req.method() == Method::GET && path != "/ui/events" {
        let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let query = serde_urlencoded_next(target);
        return Redirect::to(&format!("/ui/login?next={query}")).into_response();
    }
    (StatusCode::UNAUTHORIZED, "log in at /ui/login").into_response()
}

/// Percent-encodes a local path for a query value (only what a path and query can
/// hold needs escaping here).
fn serde_urlencoded_next(target: &str) -> String {
    let mut out = String::with_capacity(target.len());
    for b in target.bytes() {
        if b.is_ascii_alphanumeric() || b"-_./".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Deserialize)]
pub(crate) struct LoginQuery {
    next: Option<String>,
}

fn login_page(next: Option<&str>, failed: bool, tokens_configured: bool) -> Html<String> {
    let body = views::bare(
        "Log in",
        html! {
            main.login {
                section.card {
                    h1 { "Syncflow dashboard" }
                    @if !tokens_configured {
                        p { "No API tokens are configured: the dashboard is open. " a href="/" { "Go to the overview" } }
                    } @else {
                        @if failed { p.error #login-error { "That token is not valid." } }
                        form method="post" action="/ui/login" {
                            label for="token" { "API token (a full-access token from SYNCFLOW_API_TOKENS)" }
                            input #token type="password" name="token" autocomplete="current-password" required autofocus;
                            input type="hidden" name="next" value=(next.unwrap_or("/"));
                            button.primary type="submit" { "Log in" }
                        }
                    }
                }
            }
        },
    );
    Html(body.into_string())
}

pub(crate) async fn login_form(
    State(state): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<LoginQuery>,
) -> Html<String> {
    login_page(q.next.as_deref(), false, !state.tokens.is_empty())
}

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    token: String,
    next: Option<String>,
}

pub(crate) async fn login(State(state): State<AppState>, Form(form): Form<LoginForm>) -> Response {
    let token = form.token.trim();
    if state.tokens.is_empty() || token.is_empty() || !state.tokens.allows(Some(token)) {
        let page = login_page(form.next.as_deref(), !state.tokens.is_empty(), !state.tokens.is_empty());
        return (StatusCode::UNAUTHORIZED, page).into_response();
    }
    let value = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token);
    let cookie = format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECONDS}");
    let mut resp = super::back_to(form.next.as_deref()).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

pub(crate) async fn logout() -> Response {
    let mut resp = Redirect::to("/ui/login").into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("syncflow_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn cross_site_posts_are_told_apart() {
        assert!(same_origin(&headers(&[("host", "127.0.0.1:8080")])));
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
            ("sec-fetch-site", "same-origin")
        ])));
        assert!(!same_origin(&headers(&[("host", "127.0.0.1:8080"), ("sec-fetch-site", "cross-site")])));
        assert!(!same_origin(&headers(&[("host", "127.0.0.1:8080"), ("sec-fetch-site", "same-site")])));
        assert!(!same_origin(&headers(&[("host", "127.0.0.1:8080"), ("origin", "http://evil.example")])));
        assert!(!same_origin(&headers(&[("host", "127.0.0.1:8080"), ("origin", "null")])));
    }

    #[test]
    fn the_session_cookie_round_trips_any_token() {
        let value = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("a;b=c d");
        let h = headers(&[("cookie", &format!("other=1; {COOKIE}={value}; x=y"))]);
        assert_eq!(session_token(&h).as_deref(), Some("a;b=c d"));
        assert_eq!(session_token(&headers(&[("cookie", "other=1")])), None);
    }
}
