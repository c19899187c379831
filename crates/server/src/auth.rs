//! Bearer-token access control for `/v1/*`. Tokens are compared in constant time
//! and never logged or shown by `Debug`.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::{ApiError, AppState};

#[derive(Clone, Default)]
pub struct ApiTokens(std::sync::Arc<Vec<String>>);

impl std::fmt::Debug for ApiTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiTokens({} configured)", self.0.len())
    }
}

impl ApiTokens {
    /// Parses a comma-separated list; blanks are ignored.
    pub fn parse(list: &str) -> Self {
        Self(std::sync::Arc::new(
            list.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_string).collect(),
        ))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True when no tokens are configured (open API) or `presented` is one of them.
    pub fn allows(&self, presented: Option<&str>) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let Some(p) = presented else { return false };
        // Check every token (no early exit) so timing says nothing about which matched.
        self.0.iter().fold(false, |ok, t| ok | bool::from(t.as_bytes().ct_eq(p.as_bytes())))
    }
}

pub(crate) async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    if state.tokens.allows(presented) {
        next.run(req).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::ApiTokens;

    #[test]
    fn tokens_match_exactly() {
        let t = ApiTokens::parse(" a1 , ,b2");
        assert!(t.allows(Some("a1")) && t.allows(Some("b2")));
        assert!(!t.allows(Some("a")) && !t.allows(Some("a12")) && !t.allows(None));
        assert!(ApiTokens::parse("").allows(None));
        assert_eq!(format!("{t:?}"), "ApiTokens(2 configured)");
    }
}
