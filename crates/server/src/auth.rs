//! Bearer-token access control for `/v1/*`: who is calling (a `Principal`) and what
//! it may touch. Full-access tokens reach everything; client tokens reach only the
//! sync, stream and change APIs and the entities their config lists.
//!
//! Invariants kept here: tokens are compared in constant time and never logged or
//! shown by `Debug`; a client token never reaches a route or an entity it was not
//! granted (routes are denied unless listed here, so new admin routes start closed).

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;
use syncflow_core::{ConflictPolicy, Entity, ENTITIES};

use crate::{ApiError, AppState};

#[derive(Clone, Default)]
pub struct ApiTokens(std::sync::Arc<Vec<String>>);

impl std::fmt::Debug for ApiTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiTokens({} configured)", self.0.len())
    }
}

/// Constant-time equality that also hides which of several tokens matched.
fn token_eq(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
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
        self.matches(p)
    }

    /// True when `presented` is one of the configured tokens.
    fn matches(&self, presented: &str) -> bool {
        // Check every token (no early exit) so timing says nothing about which matched.
        self.0.iter().fold(false, |ok, t| ok | token_eq(t, presented))
    }
}

/// One sync client as configured (`[[clients]]`), before validation.
#[derive(Clone, Default)]
pub struct ClientSpec {
    pub id: String,
    pub token: Option<String>,
    /// Entity names it may read and write; `None` for all.
    pub entities: Option<Vec<String>>,
    /// `last_writer_wins` (default) or `reject_stale`.
    pub conflict_policy: Option<String>,
    /// Requests with no `Authorization` header act as this client (for clients
    /// that cannot send a token, such as the `001` seed's).
    pub anonymous: bool,
}

impl std::fmt::Debug for ClientSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSpec")
            .field("id", &self.id)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("entities", &self.entities)
            .field("conflict_policy", &self.conflict_policy)
            .field("anonymous", &self.anonymous)
            .finish()
    }
}

/// A validated sync client.
pub struct ClientAccess {
    pub id: String,
    token: Option<String>,
    /// `None`: every entity.
    entities: Option<Vec<&'static Entity>>,
    pub conflict_policy: ConflictPolicy,
    anonymous: bool,
}

impl std::fmt::Debug for ClientAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAccess")
            .field("id", &self.id)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("entities", &self.entities.as_ref().map(|l| l.iter().map(|e| e.name).collect::<Vec<_>>()))
            .field("conflict_policy", &self.conflict_policy)
            .field("anonymous", &self.anonymous)
            .finish()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClientConfigError {
    #[error("client id `{0}` must be 1 to 64 characters of A-Z, a-z, 0-9, `.`, `_`, `-`")]
    BadId(String),
    #[error("client id `{0}` is configured twice")]
    DuplicateId(String),
    #[error("client `{0}` has an empty token")]
    EmptyToken(String),
    #[error("client `{0}` has the same token as another client or a full-access token")]
    SharedToken(String),
    #[error("client `{0}` has neither a token nor anonymous = true")]
    NoCredential(String),
    #[error("clients `{0}` and `{1}` both say anonymous = true; at most one may")]
    TwoAnonymous(String, String),
    #[error("client `{client}` lists unknown entity `{entity}`; known: {known}")]
    UnknownEntity { client: String, entity: String, known: String },
    #[error("client `{client}` has conflict_policy `{policy}`; use last_writer_wins or reject_stale")]
    BadPolicy { client: String, policy: String },
}

/// Checks a client id's syntax (ids appear in change origins: `client:<id>`).
pub fn valid_client_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Every configured sync client.
#[derive(Clone, Default)]
pub struct Clients(Arc<Vec<Arc<ClientAccess>>>);

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter()).finish()
    }
}

impl Clients {
    /// Validates the client list against itself and the full-access tokens.
    pub fn new(specs: Vec<ClientSpec>, tokens: &ApiTokens) -> Result<Clients, ClientConfigError> {
        let mut out: Vec<Arc<ClientAccess>> = Vec::with_capacity(specs.len());
        for spec in specs {
            let id = spec.id.clone();
            if !valid_client_id(&id) {
                return Err(ClientConfigError::BadId(id));
            }
            if out.iter().any(|c| c.id == id) {
                return Err(ClientConfigError::DuplicateId(id));
            }
            let token = spec.token.map(|t| t.trim().to_string());
            match &token {
                Some(t) if t.is_empty() => return Err(ClientConfigError::EmptyToken(id)),
                Some(t) => {
                    let shared =
                        tokens.matches(t) || out.iter().any(|c| c.token.as_deref().is_some_and(|o| token_eq(o, t)));
                    if shared {
                        return Err(ClientConfigError::SharedToken(id));
                    }
                }
                None if !spec.anonymous => return Err(ClientConfigError::NoCredential(id)),
                None => {}
            }
            if spec.anonymous {
                if let Some(other) = out.iter().find(|c| c.anonymous) {
                    return Err(ClientConfigError::TwoAnonymous(other.id.clone(), id));
                }
            }
            let entities = match spec.entities {
                None => None,
                Some(names) => {
                    let mut list = Vec::with_capacity(names.len());
                    for name in names {
                        let entity = Entity::by_name(&name).or_else(|| Entity::by_plural(&name)).ok_or_else(|| {
                            ClientConfigError::UnknownEntity {
                                client: id.clone(),
                                entity: name.clone(),
                                known: ENTITIES.iter().map(|e| e.name).collect::<Vec<_>>().join(", "),
                            }
                        })?;
                        if !list.contains(&entity) {
                            list.push(entity);
                        }
                    }
                    Some(list)
                }
            };
            let conflict_policy = match spec.conflict_policy.as_deref() {
                None => ConflictPolicy::default(),
                Some(p) => ConflictPolicy::parse(p)
                    .ok_or_else(|| ClientConfigError::BadPolicy { client: id.clone(), policy: p.to_string() })?,
            };
            out.push(Arc::new(ClientAccess { id, token, entities, conflict_policy, anonymous: spec.anonymous }));
        }
        Ok(Clients(Arc::new(out)))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether any client authenticates with a token.
    pub fn has_tokens(&self) -> bool {
        self.0.iter().any(|c| c.token.is_some())
    }

    fn by_token(&self, presented: &str) -> Option<Arc<ClientAccess>> {
        // Compare against every token, remembering the match, so timing does not
        // reveal which client (if any) matched.
        let mut found = None;
        for c in self.0.iter() {
            if c.token.as_deref().is_some_and(|t| token_eq(t, presented)) {
                found = Some(c.clone());
            }
        }
        found
    }

    fn anonymous(&self) -> Option<Arc<ClientAccess>> {
        self.0.iter().find(|c| c.anonymous).cloned()
    }
}

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Principal {
    /// A full-access token, or anyone when no token of any kind is configured.
    Operator,
    /// A sync client, limited to its entities.
    Client(Arc<ClientAccess>),
}

/// Header naming the client for full-access callers (clients are named by token).
pub const CLIENT_HEADER: &str = "syncflow-client";

impl Principal {
    /// Whether this caller may read and write `entity`.
    pub fn may_access(&self, entity: &Entity) -> bool {
        match self {
            Principal::Operator => true,
            Principal::Client(c) => c.entities.as_ref().is_none_or(|l| l.contains(&entity)),
        }
    }

    /// The entities this caller may see.
    pub fn entities(&self) -> Vec<&'static Entity> {
        ENTITIES.iter().copied().filter(|e| self.may_access(e)).collect()
    }

    /// The entities to serve for an optional `entity=a,b` filter: 400 for an
    /// unknown name, 403 for one this caller may not see.
    pub fn entity_filter(&self, requested: Option<&str>) -> Result<Vec<&'static Entity>, ApiError> {
        let Some(list) = requested else {
            return Ok(self.entities());
        };
        let mut out = Vec::new();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let entity = Entity::by_name(name).or_else(|| Entity::by_plural(name)).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "unknown entity `{name}`; known: {}",
                    ENTITIES.iter().map(|e| e.name).collect::<Vec<_>>().join(", ")
                ))
            })?;
            if !self.may_access(entity) {
                return Err(self.forbidden(entity));
            }
            if !out.contains(&entity) {
                out.push(entity);
            }
        }
        if out.is_empty() {
            return Err(ApiError::BadRequest("`entity` must name at least one entity".into()));
        }
        Ok(out)
    }

    pub fn forbidden(&self, entity: &Entity) -> ApiError {
        let who = match self {
            Principal::Operator => "this token".to_string(),
            Principal::Client(c) => format!("client `{}`", c.id),
        };
        ApiError::Forbidden(format!("{who} may not access {}", entity.plural))
    }

    /// The client id for sync: from the token; for full-access callers from the
    /// `Syncflow-Client` header, else `default`.
    pub fn client_id(&self, headers: &HeaderMap) -> Result<String, ApiError> {
        match self {
            Principal::Client(c) => Ok(c.id.clone()),
            Principal::Operator => match headers.get(CLIENT_HEADER) {
                None => Ok("default".into()),
                Some(v) => {
                    let id = v.to_str().unwrap_or("").trim();
                    if valid_client_id(id) {
                        Ok(id.to_string())
                    } else {
                        Err(ApiError::BadRequest(format!(
                            "{CLIENT_HEADER} must be 1 to 64 characters of A-Z, a-z, 0-9, `.`, `_`, `-`"
                        )))
                    }
                }
            },
        }
    }

    /// The conflict policy used when a sync request does not name one.
    pub fn default_policy(&self) -> ConflictPolicy {
        match self {
            Principal::Operator => ConflictPolicy::default(),
            Principal::Client(c) => c.conflict_policy,
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // Set by `require_token` on every `/v1` route; absent only for routes
        // outside it, which never ask.
        Ok(parts.extensions.get::<Principal>().cloned().unwrap_or(Principal::Operator))
    }
}

/// `/v1` paths a client token may use besides its entities' own routes; their
/// handlers filter by the client's entities themselves.
const CLIENT_ROUTES: &[&str] = &["/v1/sync", "/v1/sync/", "/v1/stream", "/v1/changes", "/v1/readings", "/v1/readings/"];

/// Whether a client may call `path`: its sync routes, and `/v1/<plural>[/…]` of
/// the entities it was granted. Everything else is for full-access tokens.
fn client_route_check(principal: &Principal, path: &str) -> Result<(), ApiError> {
    if CLIENT_ROUTES.contains(&path) {
        return Ok(());
    }
    let plural = path.strip_prefix("/v1/").and_then(|rest| rest.split('/').next()).unwrap_or("");
    match Entity::by_plural(plural) {
        Some(entity) if principal.may_access(entity) => Ok(()),
        Some(entity) => Err(principal.forbidden(entity)),
        None => Err(ApiError::Forbidden(
            "client tokens may use only the sync, stream and change APIs and their entities".into(),
        )),
    }
}

/// Whether `path` is under `/v1`, where a token is required (when configured)
/// whether or not a route matches, so an unknown path tells nothing about routes.
fn is_api_path(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/")
}

/// Authenticates every `/v1` request before it is routed (applied to the whole
/// router, fallback included) and leaves every other path alone.
pub(crate) async fn require_token(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    if !is_api_path(req.uri().path()) {
        return next.run(req).await;
    }
    let header = req.headers().get("authorization").map(|v| v.to_str().unwrap_or(""));
    let presented = header.and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer "))).map(str::trim);
    let auth_enabled = !state.tokens.is_empty() || state.clients.has_tokens();
    let principal = match (auth_enabled, header, presented) {
        // No token configured anywhere: an open API (loopback development), unless
        // an anonymous client is configured, which then names and limits callers.
        (false, _, _) => state.clients.anonymous().map_or(Principal::Operator, Principal::Client),
        (true, _, Some(p)) if state.tokens.matches(p) => Principal::Operator,
        (true, _, Some(p)) => match state.clients.by_token(p) {
            Some(c) => Principal::Client(c),
            None => return ApiError::Unauthorized.into_response(),
        },
        // Only a request with no credentials at all may fall back to the anonymous
        // client; a wrong or malformed one is refused.
        (true, None, None) => match state.clients.anonymous() {
            Some(c) => Principal::Client(c),
            None => return ApiError::Unauthorized.into_response(),
        },
        (true, Some(_), None) => return ApiError::Unauthorized.into_response(),
    };
    if matches!(principal, Principal::Client(_)) {
        if let Err(e) = client_route_check(&principal, req.uri().path()) {
            return e.into_response();
        }
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_exactly() {
        let t = ApiTokens::parse(" a1 , ,b2");
        assert!(t.allows(Some("a1")) && t.allows(Some("b2")));
        assert!(!t.allows(Some("a")) && !t.allows(Some("a12")) && !t.allows(None));
        assert!(ApiTokens::parse("").allows(None));
        assert_eq!(format!("{t:?}"), "ApiTokens(2 configured)");
    }

    fn spec(id: &str, token: Option<&str>) -> ClientSpec {
        ClientSpec { id: id.into(), token: token.map(str::to_string), ..Default::default() }
    }

    #[test]
    fn client_config_is_checked() {
        let admin = ApiTokens::parse("adm");
        let ok = Clients::new(
            vec![
                ClientSpec {
                    entities: Some(vec!["stock_readings".into()]),
                    conflict_policy: Some("reject_stale".into()),
                    ..spec("pos-1", Some("tok-secret-1"))
                },
                spec("pos-2", Some("t2")),
            ],
            &admin,
        )
        .unwrap();
        let c = ok.by_token("tok-secret-1").unwrap();
        let p = Principal::Client(c);
        assert!(p.may_access(&syncflow_core::STOCK_READING));
        assert!(!p.may_access(&syncflow_core::CUSTOMER));
        assert_eq!(p.default_policy(), ConflictPolicy::RejectStale);
        assert!(!format!("{ok:?}").contains("tok-secret"), "{ok:?}");

        let err = |specs| Clients::new(specs, &admin).unwrap_err();
        assert_eq!(err(vec![spec("a b", Some("t"))]), ClientConfigError::BadId("a b".into()));
        assert!(matches!(err(vec![spec("a", Some("t")), spec("a", Some("u"))]), ClientConfigError::DuplicateId(_)));
        assert!(matches!(err(vec![spec("a", Some("adm"))]), ClientConfigError::SharedToken(_)));
        assert!(matches!(err(vec![spec("a", None)]), ClientConfigError::NoCredential(_)));
        assert!(matches!(
            err(vec![ClientSpec { entities: Some(vec!["widgets".into()]), ..spec("a", Some("t")) }]),
            ClientConfigError::UnknownEntity { .. }
        ));
    }

    #[test]
    fn clients_reach_only_their_routes() {
        let clients = Clients::new(
            vec![ClientSpec { entities: Some(vec!["customer".into()]), ..spec("c", Some("t")) }],
            &ApiTokens::default(),
        )
        .unwrap();
        let p = Principal::Client(clients.by_token("t").unwrap());
        assert!(client_route_check(&p, "/v1/sync").is_ok());
        assert!(client_route_check(&p, "/v1/customers/cust_1").is_ok());
        assert!(matches!(client_route_check(&p, "/v1/invoices"), Err(ApiError::Forbidden(_))));
        assert!(matches!(client_route_check(&p, "/v1/deliveries"), Err(ApiError::Forbidden(_))));
    }
}
