//! A Salesforce REST API stand-in for the parts Syncflow uses, following the facts in
//! `reference/salesforce.md`: the OAuth 2.0 token endpoint (client credentials and JWT
//! bearer with an RS256 signature check), `Contact` and `Account` with Salesforce ids
//! (15/18 characters, case-safe suffix) and timestamps (`2026-05-20T20:49:32.000+0000`),
//! single-record CRUD, upsert by external id (201/200, 300 on several matches), sObject
//! Collections (200 records, per-item `statusCode` errors, `allOrNone`), a SOQL subset
//! on `/query` and `/queryAll` with `nextRecordsUrl` paging, `/updated/` and `/deleted/`,
//! `/limits` and `Sforce-Limit-Info` on every API response, and the error array format.
//!
//! Invariant: every request under `/services/data/vNN.N/` that passes authentication and
//! the daily limit counts exactly one API call, whatever it does (a collection of 200
//! records is one call). Writes made through the admin API (`ui_*`) count none and are
//! stamped with a distinct "UI user" so clients can tell them from their own writes.
//!
//! Admin endpoints (not Salesforce's), for tests and curl: `POST /_sandbox/ui/{sobject}`,
//! `GET|PATCH|DELETE /_sandbox/ui/{sobject}/{id}`, `POST /_sandbox/ui/{sobject}/{id}/undelete`,
//! `GET /_sandbox/ui/{sobject}`,
//! `POST /_sandbox/knobs` (JSON), `GET /_sandbox/stats`.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use chrono::{DateTime, Timelike, Utc};
use hmac::{Hmac, Mac};
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier;
use rsa::RsaPublicKey;
use serde_json::{json, Map, Value};
use sha2::Sha256;

/// Behaviour knobs. Everything but the credentials can be changed while running
/// (methods below, or `POST /_sandbox/knobs`).
#[derive(Clone)]
pub struct SalesforceOptions {
    /// Client credentials flow; also the `iss` a JWT bearer assertion must carry.
    pub client_id: String,
    pub client_secret: String,
    /// JWT bearer flow: assertions are verified (RS256) with this key, PKCS#1
    /// (`BEGIN RSA PUBLIC KEY`) or SPKI (`BEGIN PUBLIC KEY`) PEM. `None` turns the flow off.
    pub jwt_public_key_pem: Option<String>,
    /// The `sub` a JWT must carry; `None` accepts any user name.
    pub jwt_username: Option<String>,
    /// The org's daily API allowance (Salesforce's is a rolling 24 h; the sandbox counts
    /// every call since start).
    pub daily_limit: u64,
    /// Access tokens expire after this; then calls answer 401 `INVALID_SESSION_ID`.
    pub token_ttl: Option<Duration>,
    /// Fraction (0..1) of writes (single records, or collection items) answered
    /// `UNABLE_TO_LOCK_ROW`.
    pub lock_row_rate: f64,
    /// Added to every request.
    pub latency: Duration,
    /// Rows per query page (Salesforce: 2000; `Sforce-Query-Options: batchSize=` lowers
    /// it, within 200..2000).
    pub query_batch_size: usize,
}

impl Default for SalesforceOptions {
    fn default() -> Self {
        Self {
            client_id: "syncflow-sandbox-client".to_string(),
            client_secret: "syncflow-sandbox-secret".to_string(),
            jwt_public_key_pem: None,
            jwt_username: None,
            daily_limit: 100_000,
            token_ttl: None,
            lock_row_rate: 0.0,
            latency: Duration::ZERO,
            query_batch_size: 2000,
        }
    }
}

impl std::fmt::Debug for SalesforceOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SalesforceOptions")
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("jwt_public_key_pem", &self.jwt_public_key_pem.as_ref().map(|_| "<pem>"))
            .field("jwt_username", &self.jwt_username)
            .field("daily_limit", &self.daily_limit)
            .field("token_ttl", &self.token_ttl)
            .field("lock_row_rate", &self.lock_row_rate)
            .field("latency", &self.latency)
            .field("query_batch_size", &self.query_batch_size)
            .finish()
    }
}

/// Counters for tests and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SalesforceStats {
    /// API calls counted against the daily limit.
    pub api_calls: u64,
    /// Of which sObject Collections requests.
    pub collection_calls: u64,
    /// Live (not deleted) Contacts and Accounts.
    pub records: usize,
    /// Calls refused with `REQUEST_LIMIT_EXCEEDED`.
    pub limit_refusals: u64,
    /// Tokens issued by `/services/oauth2/token`.
    pub tokens_issued: u64,
    /// Writes (or collection items) answered `UNABLE_TO_LOCK_ROW`.
    pub lock_row_errors: u64,
}

/// The external-id field both types start with (unique, case-insensitive, as Salesforce's
/// default for a unique text field); `add_external_id_field` declares more.
pub const EXTERNAL_ID_FIELD: &str = "Syncflow_Id__c";
const MAX_COLLECTION: usize = 200;
const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const SUFFIX: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";
const SYSTEM_FIELDS: &[&str] =
    &["Id", "IsDeleted", "CreatedDate", "CreatedById", "LastModifiedDate", "LastModifiedById", "SystemModstamp"];
const DATETIME_FIELDS: &[&str] = &["CreatedDate", "LastModifiedDate", "SystemModstamp"];
const CONTACT_FIELDS: &[(&str, usize)] = &[
    ("FirstName", 40),
    ("LastName", 80),
    ("Email", 80),
    ("Phone", 40),
    ("Title", 128),
    ("Description", 32000),
    ("AccountId", 18),
];
const ACCOUNT_FIELDS: &[(&str, usize)] = &[("Name", 255), ("Phone", 40), ("Website", 255), ("Description", 32000)];
const ROLLED_BACK: &str =
    "Record rolled back because not all records were valid and the request was using AllOrNone header";

/// The 18-character form of a 15-character Salesforce id: three suffix characters,
/// each encoding which of five characters are upper case.
pub fn id18(id15: &str) -> String {
    let mut out = id15.to_string();
    for chunk in id15.as_bytes().chunks(5) {
        let bits = chunk.iter().enumerate().filter(|(_, c)| c.is_ascii_uppercase()).fold(0, |n, (i, _)| n | (1 << i));
        out.push(SUFFIX[bits] as char);
    }
    out
}

/// A 15- or 18-character id in its 18-character form (an 18-character id's case is
/// restored from its suffix, as the API does); `None` when malformed.
pub fn normalize_id(id: &str) -> Option<String> {
    if !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    match id.len() {
        15 => Some(id18(id)),
        18 => {
            let mut restored = String::with_capacity(15);
            for (chunk, s) in id[15..].to_ascii_uppercase().bytes().enumerate() {
                let bits = SUFFIX.iter().position(|c| *c == s)?;
                for (i, c) in id[chunk * 5..chunk * 5 + 5].chars().enumerate() {
                    restored.push(if bits & (1 << i) != 0 { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() });
                }
            }
            Some(id18(&restored))
        }
        _ => None,
    }
}

/// Salesforce's timestamp format, whole seconds: `2026-05-20T20:49:32.000+0000`.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S.000+0000").to_string()
}

/// Parses `2026-05-20T20:49:32Z`, `…32.000+0000`, `…32+00:00` (a `+` decoded to a space
/// by a form decoder is taken back), truncated to whole seconds.
pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim().replace(' ', "+");
    DateTime::parse_from_rfc3339(&text)
        .or_else(|_| DateTime::parse_from_str(&text, "%Y-%m-%dT%H:%M:%S%.f%z"))
        .ok()
        .and_then(|t| t.with_timezone(&Utc).with_nanosecond(0))
}

fn floor_minute(t: DateTime<Utc>) -> DateTime<Utc> {
    t.with_second(0).and_then(|t| t.with_nanosecond(0)).unwrap_or(t)
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
enum SObject {
    Account,
    Contact,
}

impl SObject {
    fn parse(name: &str) -> Option<Self> {
        if name.eq_ignore_ascii_case("Contact") {
            Some(Self::Contact)
        } else if name.eq_ignore_ascii_case("Account") {
            Some(Self::Account)
        } else {
            None
        }
    }

    fn from_id(id: &str) -> Option<Self> {
        [Self::Contact, Self::Account].into_iter().find(|t| id.starts_with(t.prefix()))
    }

    fn name(self) -> &'static str {
        match self {
            Self::Contact => "Contact",
            Self::Account => "Account",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Self::Contact => "003",
            Self::Account => "001",
        }
    }

    fn writable(self) -> &'static [(&'static str, usize)] {
        match self {
            Self::Contact => CONTACT_FIELDS,
            Self::Account => ACCOUNT_FIELDS,
        }
    }

    fn required(self) -> &'static [&'static str] {
        match self {
            Self::Contact => &["LastName"],
            Self::Account => &["Name"],
        }
    }
}

/// A field name resolved against a type: canonical spelling and what may be done with it.
#[derive(Clone, Debug, PartialEq)]
enum FieldRef {
    /// Set by the platform (Id, dates, users, IsDeleted).
    System(&'static str),
    /// Read-only, derived (Contact.Name).
    Computed(&'static str),
    Standard(&'static str, usize),
    Custom(String),
}

impl FieldRef {
    fn name(&self) -> &str {
        match self {
            Self::System(n) | Self::Computed(n) | Self::Standard(n, _) => n,
            Self::Custom(n) => n,
        }
    }
}

/// One stored record: its values (system fields included) and when it went to the
/// recycle bin.
#[derive(Clone, Debug)]
struct Row {
    values: Map<String, Value>,
    modstamp: DateTime<Utc>,
    deleted_at: Option<DateTime<Utc>>,
}

/// An error as Salesforce reports it.
#[derive(Debug, Clone)]
struct SfError {
    status: u16,
    code: String,
    message: String,
    /// The fields in error; for a 300, the urls of the matching records.
    fields: Vec<String>,
}

impl SfError {
    fn new(status: u16, code: &str, message: impl Into<String>) -> Self {
        Self { status, code: code.to_string(), message: message.into(), fields: Vec::new() }
    }

    fn bad(code: &str, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }

    fn fields(mut self, fields: &[&str]) -> Self {
        self.fields = fields.iter().map(|f| f.to_string()).collect();
        self
    }

    fn not_found() -> Self {
        Self::new(404, "NOT_FOUND", "The requested resource does not exist")
    }

    /// The REST error array: `[{"message","errorCode","fields"?}]`.
    fn response(&self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        if self.status == 300 {
            return (status, Json(json!(self.fields))).into_response();
        }
        let mut e = json!({"message": self.message, "errorCode": self.code});
        if !self.fields.is_empty() {
            e["fields"] = json!(self.fields);
        }
        (status, Json(json!([e]))).into_response()
    }

    /// The per-item form inside a SaveResult: `{"statusCode","message","fields"}`.
    fn item(&self) -> Value {
        json!({"statusCode": self.code, "message": self.message, "fields": self.fields})
    }
}

/// Why a record could not be found by id.
enum Missing {
    Malformed,
    WrongType,
    Absent,
    Deleted,
}

impl Missing {
    /// As a single-record route answers it.
    fn single(&self, raw: &str) -> SfError {
        match self {
            Missing::Malformed => SfError::new(
                404,
                "NOT_FOUND",
                format!("Provided external ID field does not exist or is not accessible: {raw}"),
            ),
            Missing::WrongType | Missing::Absent => SfError::not_found(),
            Missing::Deleted => SfError::new(404, "ENTITY_IS_DELETED", "entity is deleted"),
        }
    }

    /// As a collection item answers it.
    fn item(&self, t: SObject, raw: &str) -> SfError {
        match self {
            Missing::Malformed => SfError::bad("MALFORMED_ID", format!("malformed id {raw}")),
            Missing::WrongType => {
                SfError::bad("MALFORMED_ID", format!("{} ID: id value of incorrect type: {raw}", t.name()))
            }
            Missing::Absent => SfError::bad("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id"),
            Missing::Deleted => SfError::bad("ENTITY_IS_DELETED", "entity is deleted"),
        }
    }
}

struct Knobs {
    daily_limit: u64,
    token_ttl: Option<Duration>,
    lock_row_rate: f64,
    latency: Duration,
    query_batch_size: usize,
    unique_external_id: bool,
    clock_offset: chrono::Duration,
}

struct Cursor {
    id: String,
    rows: Vec<Value>,
    batch: usize,
}

struct Data {
    knobs: Knobs,
    rows: HashMap<SObject, BTreeMap<String, Row>>,
    /// Custom fields seen per type, in their first spelling (field names are
    /// case-insensitive).
    custom: HashMap<SObject, Vec<String>>,
    counter: u64,
    tokens: HashMap<String, Instant>,
    api_used: u64,
    api_calls: u64,
    collection_calls: u64,
    limit_refusals: u64,
    tokens_issued: u64,
    lock_row_errors: u64,
    cursors: VecDeque<Cursor>,
    /// The delete log starts here (sandbox start, or the last purge).
    earliest_deleted: DateTime<Utc>,
    /// Undo log while an all-or-none collection runs.
    journal: Option<Vec<(SObject, String, Option<Row>)>>,
    integration_user: String,
    ui_user: String,
    org_id: String,
    /// Live records by lower-cased external id: upserts stay O(log n) at bench sizes.
    external_ids: HashMap<(SObject, String, String), std::collections::BTreeSet<String>>,
    /// External-id fields per type (canonical spelling).
    external_fields: HashMap<SObject, Vec<String>>,
    /// The changeOrigin of each record's last write (`com/salesforce/api/rest/66.0;client=…`);
    /// empty for UI edits.
    origins: HashMap<String, String>,
    /// The origin of the API call being served; `None` for UI edits.
    current_origin: Option<String>,
}

struct Auth {
    client_id: String,
    client_secret: String,
    jwt_key: Option<VerifyingKey<Sha256>>,
    jwt_username: Option<String>,
}

/// The running stand-in; cheap to clone.
#[derive(Clone)]
pub struct SalesforceSandbox {
    data: Arc<Mutex<Data>>,
    auth: Arc<Auth>,
    pub addr: SocketAddr,
}

fn base62(mut n: u64, width: usize) -> String {
    let mut digits = Vec::new();
    while n > 0 {
        digits.push(BASE62[(n % 62) as usize]);
        n /= 62;
    }
    while digits.len() < width {
        digits.push(b'0');
    }
    digits.reverse();
    String::from_utf8(digits).expect("ascii")
}

fn valid_email(s: &str) -> bool {
    let mut parts = s.splitn(2, '@');
    let (local, domain) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && !s.contains(char::is_whitespace)
}

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

impl Data {
    fn new(options: &SalesforceOptions) -> Self {
        let mut d = Data {
            knobs: Knobs {
                daily_limit: options.daily_limit,
                token_ttl: options.token_ttl,
                lock_row_rate: options.lock_row_rate,
                latency: options.latency,
                query_batch_size: options.query_batch_size.max(1),
                unique_external_id: true,
                clock_offset: chrono::Duration::zero(),
            },
            rows: HashMap::from([(SObject::Contact, BTreeMap::new()), (SObject::Account, BTreeMap::new())]),
            custom: HashMap::from([
                (SObject::Contact, vec![EXTERNAL_ID_FIELD.to_string()]),
                (SObject::Account, vec![EXTERNAL_ID_FIELD.to_string()]),
            ]),
            counter: 0,
            tokens: HashMap::new(),
            api_used: 0,
            api_calls: 0,
            collection_calls: 0,
            limit_refusals: 0,
            tokens_issued: 0,
            lock_row_errors: 0,
            cursors: VecDeque::new(),
            earliest_deleted: Utc::now(),
            journal: None,
            integration_user: id18("005Hs00000SyncA"),
            ui_user: id18("005Hs00000UiUsr"),
            org_id: id18("00DHs00000SyncF"),
            external_ids: HashMap::new(),
            external_fields: HashMap::from([
                (SObject::Contact, vec![EXTERNAL_ID_FIELD.to_string()]),
                (SObject::Account, vec![EXTERNAL_ID_FIELD.to_string()]),
            ]),
            origins: HashMap::new(),
            current_origin: None,
        };
        d.earliest_deleted = floor_minute(d.now());
        d
    }

    /// This org's clock, whole seconds.
    fn now(&self) -> DateTime<Utc> {
        let t = Utc::now() + self.knobs.clock_offset;
        t.with_nanosecond(0).unwrap_or(t)
    }

    fn next_id(&mut self, prefix: &str) -> String {
        self.counter += 1;
        // "Hs" pod, one reserved character, then a counter: ids sort by creation.
        id18(&format!("{prefix}Hs0{}", base62(self.counter, 9)))
    }

    fn table(&self, t: SObject) -> &BTreeMap<String, Row> {
        &self.rows[&t]
    }

    /// Every change of a stored row goes through here, so all-or-none can undo it.
    fn put(&mut self, t: SObject, id: String, row: Option<Row>) {
        let old = self.replace(t, &id, row);
        self.origins.insert(id.clone(), self.current_origin.clone().unwrap_or_default());
        if let Some(journal) = self.journal.as_mut() {
            journal.push((t, id, old));
        }
    }

    /// Stores (or removes) a row and keeps the external-id index in step.
    fn replace(&mut self, t: SObject, id: &str, row: Option<Row>) -> Option<Row> {
        let new_keys = row.as_ref().map(|r| self.index_keys(t, r)).unwrap_or_default();
        let table = self.rows.get_mut(&t).expect("table");
        let old = match row {
            Some(r) => table.insert(id.to_string(), r),
            None => table.remove(id),
        };
        for k in old.as_ref().map(|r| self.index_keys(t, r)).unwrap_or_default() {
            if let Some(ids) = self.external_ids.get_mut(&k) {
                ids.remove(id);
                if ids.is_empty() {
                    self.external_ids.remove(&k);
                }
            }
        }
        for k in new_keys {
            self.external_ids.entry(k).or_default().insert(id.to_string());
        }
        old
    }

    /// A live row's entries in the external-id index.
    fn index_keys(&self, t: SObject, r: &Row) -> Vec<(SObject, String, String)> {
        if r.deleted_at.is_some() {
            return Vec::new();
        }
        self.external_fields[&t]
            .iter()
            .filter_map(|f| r.values.get(f).and_then(text_of).map(|v| (t, f.clone(), v.to_lowercase())))
            .collect()
    }

    /// The canonical name of an external-id field of `t`.
    fn external_field(&self, t: SObject, name: &str) -> Option<String> {
        self.external_fields[&t].iter().find(|f| f.eq_ignore_ascii_case(name)).cloned()
    }

    fn roll_back(&mut self, journal: Vec<(SObject, String, Option<Row>)>) {
        for (t, id, old) in journal.into_iter().rev() {
            self.replace(t, &id, old);
        }
    }

    fn lock_row(&mut self) -> bool {
        let hit = self.knobs.lock_row_rate > 0.0 && rand::random::<f64>() < self.knobs.lock_row_rate;
        if hit {
            self.lock_row_errors += 1;
        }
        hit
    }

    fn lock_row_error(id: &str) -> SfError {
        SfError::bad(
            "UNABLE_TO_LOCK_ROW",
            format!("unable to obtain exclusive access to this record or 1 records: {id}"),
        )
    }

    /// Resolves a field name (case-insensitive) for reading; custom fields need not
    /// have been written yet.
    fn resolve(&self, t: SObject, name: &str) -> Option<FieldRef> {
        if let Some(f) = SYSTEM_FIELDS.iter().find(|f| f.eq_ignore_ascii_case(name)) {
            return Some(FieldRef::System(f));
        }
        if t == SObject::Contact && name.eq_ignore_ascii_case("Name") {
            return Some(FieldRef::Computed("Name"));
        }
        if let Some((f, max)) = t.writable().iter().find(|(f, _)| f.eq_ignore_ascii_case(name)) {
            return Some(FieldRef::Standard(f, *max));
        }
        let custom = name.len() > 3
            && name[name.len() - 3..].eq_ignore_ascii_case("__c")
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && name.as_bytes()[0].is_ascii_alphabetic();
        if custom {
            let known = self.custom[&t].iter().find(|f| f.eq_ignore_ascii_case(name));
            return Some(FieldRef::Custom(known.cloned().unwrap_or_else(|| name.to_string())));
        }
        None
    }

    fn register_custom(&mut self, t: SObject, name: &str) {
        let list = self.custom.get_mut(&t).expect("custom");
        if !list.iter().any(|f| f.eq_ignore_ascii_case(name)) {
            list.push(name.to_string());
        }
    }

    fn invalid_field(t: SObject, name: &str) -> SfError {
        SfError::bad("INVALID_FIELD", format!("No such column '{name}' on sobject of type {}", t.name()))
    }

    /// Applies a request body to a record's values, validating as Salesforce does.
    /// `skip` names keys the caller has handled (the Id of a collection update).
    fn apply(
        &mut self,
        t: SObject,
        values: &mut Map<String, Value>,
        body: &Map<String, Value>,
        skip: &[&str],
    ) -> Result<(), SfError> {
        for (key, value) in body {
            if key == "attributes" || skip.iter().any(|s| s.eq_ignore_ascii_case(key)) {
                continue;
            }
            let field = self.resolve(t, key).ok_or_else(|| Self::invalid_field(t, key))?;
            let value = match value {
                Value::String(s) if s.is_empty() => Value::Null,
                Value::Object(_) | Value::Array(_) => {
                    return Err(SfError::bad(
                        "JSON_PARSER_ERROR",
                        format!("Cannot deserialize instance of {} from an object or array value", field.name()),
                    ))
                }
                v => v.clone(),
            };
            match field {
                FieldRef::System(n) | FieldRef::Computed(n) => {
                    return Err(SfError::bad(
                        "INVALID_FIELD_FOR_INSERT_UPDATE",
                        format!("Unable to create/update fields: {n}. Please check the security settings of this field and verify that it is read/write for your profile or permission set."),
                    )
                    .fields(&[n]))
                }
                FieldRef::Standard(n, max) => {
                    let value = match text_of(&value) {
                        Some(s) => s,
                        None => {
                            values.insert(n.to_string(), Value::Null);
                            continue;
                        }
                    };
                    if value.chars().count() > max {
                        return Err(SfError::bad(
                            "STRING_TOO_LONG",
                            format!("{n}: data value too large: {} (max length={max})", value.chars().take(40).collect::<String>()),
                        )
                        .fields(&[n]));
                    }
                    let value = if n == "Email" && !valid_email(&value) {
                        return Err(SfError::bad("INVALID_EMAIL_ADDRESS", format!("Email: invalid email address: {value}"))
                            .fields(&[n]));
                    } else if n == "AccountId" {
                        match normalize_id(&value).filter(|id| self.table(SObject::Account).get(id).is_some_and(|r| r.deleted_at.is_none())) {
                            Some(id) => id,
                            None => {
                                return Err(SfError::bad(
                                    "INVALID_CROSS_REFERENCE_KEY",
                                    format!("Account ID: id value of incorrect type: {value}"),
                                )
                                .fields(&[n]))
                            }
                        }
                    } else {
                        value
                    };
                    values.insert(n.to_string(), Value::String(value));
                }
                FieldRef::Custom(n) => {
                    if let Value::String(s) = &value {
                        if s.chars().count() > 255 {
                            return Err(SfError::bad(
                                "STRING_TOO_LONG",
                                format!("{n}: data value too large: {} (max length=255)", s.chars().take(40).collect::<String>()),
                            )
                            .fields(&[&n]));
                        }
                    }
                    self.register_custom(t, &n);
                    values.insert(n, value);
                }
            }
        }
        let missing: Vec<&str> =
            t.required().iter().filter(|f| values.get(**f).is_none_or(Value::is_null)).copied().collect();
        if !missing.is_empty() {
            return Err(SfError::bad(
                "REQUIRED_FIELD_MISSING",
                format!("Required fields are missing: [{}]", missing.join(", ")),
            )
            .fields(&missing));
        }
        Ok(())
    }

    /// Live records whose external id equals `value` (case-insensitive).
    fn find_external(&self, t: SObject, field: &str, value: &str) -> Vec<String> {
        let key = (t, field.to_string(), value.to_lowercase());
        self.external_ids.get(&key).map(|ids| ids.iter().cloned().collect()).unwrap_or_default()
    }

    fn check_unique(&self, t: SObject, values: &Map<String, Value>, own: Option<&str>) -> Result<(), SfError> {
        if !self.knobs.unique_external_id {
            return Ok(());
        }
        for field in &self.external_fields[&t] {
            let Some(value) = values.get(field).and_then(text_of) else {
                continue;
            };
            if let Some(other) = self.find_external(t, field, &value).into_iter().find(|id| Some(id.as_str()) != own) {
                return Err(SfError::bad(
                    "DUPLICATE_VALUE",
                    format!("duplicate value found: {field} duplicates value on record with id: {other}"),
                )
                .fields(&[field]));
            }
        }
        Ok(())
    }

    fn lookup(&self, t: SObject, raw: &str) -> Result<(String, &Row), Missing> {
        let id = normalize_id(raw).ok_or(Missing::Malformed)?;
        if !id.starts_with(t.prefix()) {
            return Err(if SObject::from_id(&id).is_some() { Missing::WrongType } else { Missing::Absent });
        }
        match self.table(t).get(&id) {
            None => Err(Missing::Absent),
            Some(r) if r.deleted_at.is_some() => Err(Missing::Deleted),
            Some(r) => Ok((id, r)),
        }
    }

    fn create(&mut self, t: SObject, body: &Map<String, Value>, user: &str) -> Result<String, SfError> {
        if body.keys().any(|k| k.eq_ignore_ascii_case("Id")) {
            return Err(SfError::bad("INVALID_FIELD", "cannot specify Id in an insert call"));
        }
        let mut values = Map::new();
        self.apply(t, &mut values, body, &[])?;
        self.check_unique(t, &values, None)?;
        let id = self.next_id(t.prefix());
        let now = self.now();
        let stamp = format_time(now);
        let mut full = Map::new();
        full.insert("Id".into(), json!(id));
        full.insert("IsDeleted".into(), json!(false));
        full.insert("CreatedDate".into(), json!(stamp));
        full.insert("CreatedById".into(), json!(user));
        full.insert("LastModifiedDate".into(), json!(stamp));
        full.insert("LastModifiedById".into(), json!(user));
        full.insert("SystemModstamp".into(), json!(stamp));
        full.extend(values);
        self.put(t, id.clone(), Some(Row { values: full, modstamp: now, deleted_at: None }));
        Ok(id)
    }

    fn touch(&self, row: &mut Row, user: &str) {
        let now = self.now();
        let stamp = format_time(now);
        row.values.insert("LastModifiedDate".into(), json!(stamp));
        row.values.insert("LastModifiedById".into(), json!(user));
        row.values.insert("SystemModstamp".into(), json!(stamp));
        row.modstamp = now;
    }

    /// Updates a live record (`id` already normalised and checked).
    fn update(&mut self, t: SObject, id: &str, body: &Map<String, Value>, user: &str) -> Result<(), SfError> {
        let mut row = self.table(t).get(id).cloned().ok_or_else(SfError::not_found)?;
        self.apply(t, &mut row.values, body, &["Id"])?;
        self.check_unique(t, &row.values, Some(id))?;
        // Salesforce stamps an update even when nothing changed.
        self.touch(&mut row, user);
        self.put(t, id.to_string(), Some(row));
        Ok(())
    }

    /// To the recycle bin.
    fn delete(&mut self, t: SObject, id: &str, user: &str) {
        if let Some(mut row) = self.table(t).get(id).cloned() {
            self.touch(&mut row, user);
            row.values.insert("IsDeleted".into(), json!(true));
            row.deleted_at = Some(row.modstamp);
            self.put(t, id.to_string(), Some(row));
        }
    }

    fn undelete(&mut self, t: SObject, id: &str, user: &str) {
        if let Some(mut row) = self.table(t).get(id).cloned().filter(|r| r.deleted_at.is_some()) {
            self.touch(&mut row, user);
            row.values.insert("IsDeleted".into(), json!(false));
            row.deleted_at = None;
            self.put(t, id.to_string(), Some(row));
        }
    }

    /// Upsert by external id; `(id, created)`. `body` must not hold the external id.
    fn upsert(
        &mut self,
        t: SObject,
        field: &str,
        value: &str,
        body: &Map<String, Value>,
        user: &str,
        update_only: bool,
    ) -> Result<(String, bool), SfError> {
        let matches = self.find_external(t, field, value);
        match matches.as_slice() {
            [] if update_only => Err(SfError::not_found()),
            [] => {
                let mut body = body.clone();
                body.insert(field.to_string(), json!(value));
                self.create(t, &body, user).map(|id| (id, true))
            }
            [id] => {
                let id = id.clone();
                self.update(t, &id, body, user).map(|()| (id, false))
            }
            many => {
                let mut e = SfError::new(
                    300,
                    "DUPLICATE_EXTERNAL_ID",
                    format!("{field}: more than one record found for external id field: {many:?}"),
                );
                // The ids; the caller turns them into urls for the 300.
                e.fields = many.to_vec();
                Err(e)
            }
        }
    }

    /// A field's value on a record (Contact.Name derived).
    fn value(&self, t: SObject, row: &Row, field: &str) -> Value {
        if t == SObject::Contact && field == "Name" {
            let parts: Vec<String> =
                ["FirstName", "LastName"].iter().filter_map(|f| row.values.get(*f).and_then(text_of)).collect();
            return if parts.is_empty() { Value::Null } else { json!(parts.join(" ")) };
        }
        row.values.get(field).cloned().unwrap_or(Value::Null)
    }

    fn all_fields(&self, t: SObject) -> Vec<String> {
        let mut fields: Vec<String> = vec!["Id".into(), "IsDeleted".into()];
        if t == SObject::Contact {
            fields.push("Name".into());
        }
        fields.extend(t.writable().iter().map(|(f, _)| f.to_string()));
        fields.extend(SYSTEM_FIELDS[2..].iter().map(|f| f.to_string()));
        fields.extend(self.custom[&t].iter().cloned());
        fields
    }

    /// A record as the REST API shows it: `attributes` then the fields.
    fn view(&self, t: SObject, row: &Row, version: &str, fields: Option<&[String]>) -> Value {
        let id = row.values["Id"].as_str().unwrap_or_default();
        let mut out = Map::new();
        out.insert(
            "attributes".into(),
            json!({"type": t.name(), "url": format!("/services/data/{version}/sobjects/{}/{id}", t.name())}),
        );
        let all;
        let fields = match fields {
            Some(f) => f,
            None => {
                all = self.all_fields(t);
                &all
            }
        };
        for f in fields {
            out.insert(f.clone(), self.value(t, row, f));
        }
        Value::Object(out)
    }

    fn live_count(&self) -> usize {
        self.rows.values().map(|t| t.values().filter(|r| r.deleted_at.is_none()).count()).sum()
    }
}

fn sobject_or_404(name: &str) -> Result<SObject, SfError> {
    SObject::parse(name).ok_or_else(SfError::not_found)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `v66.0` → 66.0.
fn parse_version(segment: &str) -> Option<f64> {
    let n = segment.strip_prefix('v')?;
    let (major, minor) = n.split_once('.')?;
    if major.is_empty() || minor.is_empty() || !major.bytes().chain(minor.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

fn reply(status: u16, body: Value) -> Response {
    (StatusCode::from_u16(status).unwrap_or(StatusCode::OK), Json(body)).into_response()
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

fn oauth_error(error: &str, description: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": error, "error_description": description}))).into_response()
}

/// What one API request carries.
struct Call {
    method: Method,
    version: String,
    version_number: f64,
    params: HashMap<String, String>,
    headers: HeaderMap,
    body: Bytes,
}

impl Call {
    fn json_object(&self) -> Result<Map<String, Value>, SfError> {
        if self.body.is_empty() {
            return Err(SfError::bad(
                "JSON_PARSER_ERROR",
                "The HTTP entity body is required, but this request has no entity body.",
            ));
        }
        match serde_json::from_slice::<Value>(&self.body) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(SfError::bad("JSON_PARSER_ERROR", "Can not deserialize SObject out of a non-object token")),
            Err(e) => Err(SfError::bad("JSON_PARSER_ERROR", format!("Unexpected character in the body: {e}"))),
        }
    }

    /// changeOrigin as Salesforce would derive it, from `Sforce-Call-Options: client=…`.
    fn origin(&self) -> String {
        let options = self.headers.get("sforce-call-options").and_then(|v| v.to_str().ok()).unwrap_or("");
        let client = options.split(',').find_map(|o| o.trim().strip_prefix("client=")).map(str::trim);
        let version = self.version.trim_start_matches('v');
        match client {
            Some(c) if !c.is_empty() => format!("com/salesforce/api/rest/{version};client={c}"),
            _ => format!("com/salesforce/api/rest/{version}"),
        }
    }

    fn flag(&self, name: &str) -> bool {
        self.params.get(name).is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }

    fn url(&self, t: SObject, id: &str) -> String {
        format!("/services/data/{}/sobjects/{}/{id}", self.version, t.name())
    }
}

impl SalesforceSandbox {
    /// Serves on `addr` (port 0 for any); loopback addresses only. Fails when the JWT
    /// public key is given but is not an RSA PEM key.
    pub async fn start(addr: SocketAddr, options: SalesforceOptions) -> std::io::Result<SalesforceSandbox> {
        if !addr.ip().is_loopback() {
            return Err(std::io::Error::other("the sandbox binds loopback addresses only"));
        }
        let jwt_key = match &options.jwt_public_key_pem {
            None => None,
            Some(pem) => {
                let key = RsaPublicKey::from_public_key_pem(pem.trim())
                    .or_else(|_| RsaPublicKey::from_pkcs1_pem(pem.trim()))
                    .map_err(|e| {
                        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("JWT public key: {e}"))
                    })?;
                Some(VerifyingKey::<Sha256>::new(key))
            }
        };
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let sandbox = SalesforceSandbox {
            data: Arc::new(Mutex::new(Data::new(&options))),
            auth: Arc::new(Auth {
                client_id: options.client_id.clone(),
                client_secret: options.client_secret.clone(),
                jwt_key,
                jwt_username: options.jwt_username.clone(),
            }),
            addr: listener.local_addr()?,
        };
        let app = Router::new()
            .route("/services/oauth2/token", post(token))
            .route("/_sandbox/ui/{sobject}", post(admin_create).get(admin_list))
            .route("/_sandbox/ui/{sobject}/{id}", get(admin_get).patch(admin_update).delete(admin_delete))
            .route("/_sandbox/ui/{sobject}/{id}/undelete", post(admin_undelete))
            .route("/_sandbox/knobs", post(admin_knobs))
            .route("/_sandbox/stats", get(admin_stats))
            .fallback(api)
            .with_state(sandbox.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(sandbox)
    }

    /// Both the login URL and the instance URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn lock(&self) -> MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn stats(&self) -> SalesforceStats {
        let d = self.lock();
        SalesforceStats {
            api_calls: d.api_calls,
            collection_calls: d.collection_calls,
            records: d.live_count(),
            limit_refusals: d.limit_refusals,
            tokens_issued: d.tokens_issued,
            lock_row_errors: d.lock_row_errors,
        }
    }

    /// The user id stamped on writes made through the API.
    pub fn integration_user_id(&self) -> String {
        self.lock().integration_user.clone()
    }

    /// The user id stamped on `ui_*` edits.
    pub fn ui_user_id(&self) -> String {
        self.lock().ui_user.clone()
    }

    fn ui_try_create(&self, sobject: &str, fields: &Value) -> Result<String, SfError> {
        let t = SObject::parse(sobject)
            .ok_or_else(|| SfError::bad("INVALID_TYPE", format!("sObject type '{sobject}' is not supported.")))?;
        let body =
            fields.as_object().ok_or_else(|| SfError::bad("JSON_PARSER_ERROR", "fields must be a JSON object"))?;
        let mut d = self.lock();
        let user = d.ui_user.clone();
        d.create(t, body, &user)
    }

    fn ui_try_update(&self, sobject: &str, id: &str, fields: &Value) -> Result<(), SfError> {
        let t = sobject_or_404(sobject)?;
        let body =
            fields.as_object().ok_or_else(|| SfError::bad("JSON_PARSER_ERROR", "fields must be a JSON object"))?;
        let mut d = self.lock();
        let id = d.lookup(t, id).map_err(|m| m.single(id))?.0;
        let user = d.ui_user.clone();
        d.update(t, &id, body, &user)
    }

    fn ui_try_delete(&self, sobject: &str, id: &str) -> Result<(), SfError> {
        let t = sobject_or_404(sobject)?;
        let mut d = self.lock();
        let id = d.lookup(t, id).map_err(|m| m.single(id))?.0;
        let user = d.ui_user.clone();
        d.delete(t, &id, &user);
        Ok(())
    }

    /// A record created "in the UI" by another user; returns its 18-character id.
    /// Panics when Salesforce would refuse the record (a test mistake).
    pub fn ui_create(&self, sobject: &str, fields: Value) -> String {
        self.ui_try_create(sobject, &fields).unwrap_or_else(|e| panic!("ui_create {sobject}: {} {}", e.code, e.message))
    }

    /// An edit "in the UI" by another user. Panics when refused.
    pub fn ui_update(&self, sobject: &str, id: &str, fields: Value) {
        self.ui_try_update(sobject, id, &fields)
            .unwrap_or_else(|e| panic!("ui_update {sobject} {id}: {} {}", e.code, e.message))
    }

    /// A delete "in the UI": to the recycle bin (`IsDeleted = true`). Panics when refused.
    pub fn ui_delete(&self, sobject: &str, id: &str) {
        self.ui_try_delete(sobject, id).unwrap_or_else(|e| panic!("ui_delete {sobject} {id}: {} {}", e.code, e.message))
    }

    /// Restores a record from the recycle bin "in the UI".
    pub fn ui_undelete(&self, sobject: &str, id: &str) {
        let (Some(t), Some(id)) = (SObject::parse(sobject), normalize_id(id)) else {
            panic!("ui_undelete {sobject} {id}: no such record");
        };
        let mut d = self.lock();
        let user = d.ui_user.clone();
        d.undelete(t, &id, &user);
    }

    /// The changeOrigin of the record's last write: `com/salesforce/api/rest/66.0;client=<id>`
    /// for an API write with `Sforce-Call-Options: client=<id>` (Collections included:
    /// whether Salesforce passes it there is unconfirmed), empty for a UI edit.
    pub fn change_origin(&self, id: &str) -> Option<String> {
        self.lock().origins.get(&normalize_id(id)?).cloned()
    }

    /// A record with every field, deleted ones included (`IsDeleted`).
    pub fn record(&self, sobject: &str, id: &str) -> Option<Value> {
        let t = SObject::parse(sobject)?;
        let id = normalize_id(id)?;
        let d = self.lock();
        d.table(t).get(&id).map(|r| d.view(t, r, "v66.0", None))
    }

    /// Live records of a type, oldest first.
    pub fn records(&self, sobject: &str) -> Vec<Value> {
        let Some(t) = SObject::parse(sobject) else {
            return Vec::new();
        };
        let d = self.lock();
        d.table(t).values().filter(|r| r.deleted_at.is_none()).map(|r| d.view(t, r, "v66.0", None)).collect()
    }

    /// Sets the API calls used so far (the daily quota knob).
    pub fn set_api_used(&self, n: u64) {
        self.lock().api_used = n;
    }

    pub fn set_daily_limit(&self, n: u64) {
        self.lock().knobs.daily_limit = n;
    }

    /// Every access token issued so far stops working (401 `INVALID_SESSION_ID`).
    pub fn expire_tokens(&self) {
        self.lock().tokens.clear();
    }

    pub fn set_lock_row_rate(&self, rate: f64) {
        self.lock().knobs.lock_row_rate = rate.clamp(0.0, 1.0);
    }

    pub fn set_latency(&self, latency: Duration) {
        self.lock().knobs.latency = latency;
    }

    /// Moves this org's clock forward (timestamps, replication windows).
    pub fn advance_clock(&self, by: Duration) {
        let mut d = self.lock();
        d.knobs.clock_offset += chrono::Duration::from_std(by).unwrap_or_default();
    }

    /// Turns the unique constraint of the external-id field off (an external id that is
    /// not unique, so upserts can meet several matches) or back on.
    pub fn set_unique_external_id(&self, unique: bool) {
        self.lock().knobs.unique_external_id = unique;
    }

    /// Declares another custom field of `sobject` an external id (unique unless
    /// `set_unique_external_id(false)`), usable in upsert paths. Panics on a field name
    /// that is not custom (`…__c`).
    pub fn add_external_id_field(&self, sobject: &str, field: &str) {
        let t = SObject::parse(sobject).unwrap_or_else(|| panic!("add_external_id_field: no sObject {sobject}"));
        let mut d = self.lock();
        let Some(FieldRef::Custom(name)) = d.resolve(t, field) else {
            panic!("add_external_id_field: {field} is not a custom field");
        };
        d.register_custom(t, &name);
        if d.external_field(t, &name).is_none() {
            d.external_fields.get_mut(&t).expect("type").push(name);
            let rows: Vec<(String, Row)> = d.table(t).iter().map(|(id, r)| (id.clone(), r.clone())).collect();
            for (id, row) in rows {
                d.replace(t, &id, Some(row));
            }
        }
    }

    /// Empties the recycle bin and the delete log: `/deleted/` then reports
    /// `earliestDateAvailable` = now, as after Salesforce's periodic purge.
    pub fn purge_deleted(&self) {
        let mut d = self.lock();
        for table in d.rows.values_mut() {
            table.retain(|_, r| r.deleted_at.is_none());
        }
        d.earliest_deleted = floor_minute(d.now());
    }

    fn issue_token(&self, d: &mut Data, extra: &[(&str, &str)]) -> Response {
        let suffix: String = (0..96).map(|_| BASE62[rand::random::<usize>() % 62] as char).collect();
        let token = format!("{}!AQ{suffix}", &d.org_id[..15]);
        d.tokens.insert(token.clone(), Instant::now());
        d.tokens_issued += 1;
        let issued_at = Utc::now().timestamp_millis().to_string();
        let id = format!("{}/id/{}/{}", self.url(), d.org_id, d.integration_user);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.auth.client_secret.as_bytes()).expect("any key size");
        mac.update(format!("{id}{issued_at}").as_bytes());
        let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let mut body = json!({
            "access_token": token, "instance_url": self.url(), "id": id, "token_type": "Bearer",
            "issued_at": issued_at, "signature": signature,
        });
        for (k, v) in extra {
            body[*k] = json!(v);
        }
        reply(200, body)
    }

    /// Checks a JWT bearer assertion; the error description on refusal.
    fn check_assertion(&self, assertion: &str, now: i64) -> Result<(), (&'static str, &'static str)> {
        let Some(key) = &self.auth.jwt_key else {
            return Err(("invalid_grant", "JWT bearer flow is not configured for this client"));
        };
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let parts: Vec<&str> = assertion.split('.').collect();
        let [header, payload, signature] = parts.as_slice() else {
            return Err(("invalid_grant", "invalid assertion"));
        };
        let decode = |p: &str| b64.decode(p.trim_end_matches('='));
        let (Ok(header), Ok(claims), Ok(signature)) = (decode(header), decode(payload), decode(signature)) else {
            return Err(("invalid_grant", "invalid assertion"));
        };
        let header: Value = serde_json::from_slice(&header).map_err(|_| ("invalid_grant", "invalid assertion"))?;
        if header["alg"] != "RS256" {
            return Err(("invalid_grant", "invalid assertion"));
        }
        let signed = &assertion[..assertion.len() - parts[2].len() - 1];
        let signature =
            Signature::try_from(signature.as_slice()).map_err(|_| ("invalid_grant", "invalid assertion"))?;
        key.verify(signed.as_bytes(), &signature).map_err(|_| ("invalid_grant", "invalid assertion"))?;
        let claims: Value = serde_json::from_slice(&claims).map_err(|_| ("invalid_grant", "invalid assertion"))?;
        if claims["iss"] != self.auth.client_id.as_str() {
            return Err(("invalid_client", "client identifier invalid"));
        }
        let sub_ok = match &self.auth.jwt_username {
            Some(u) => claims["sub"] == u.as_str(),
            None => claims["sub"].as_str().is_some_and(|s| !s.is_empty()),
        };
        if !sub_ok {
            return Err(("invalid_grant", "user hasn't approved this consumer"));
        }
        let own = self.url();
        let aud_ok = |a: &Value| {
            a.as_str().is_some_and(|a| {
                let a = a.trim_end_matches('/');
                a == "https://login.salesforce.com" || a == "https://test.salesforce.com" || a == own
            })
        };
        let aud = &claims["aud"];
        if !(aud_ok(aud) || aud.as_array().is_some_and(|l| l.iter().any(aud_ok))) {
            return Err(("invalid_grant", "audience is invalid"));
        }
        match claims["exp"].as_i64().or_else(|| claims["exp"].as_f64().map(|f| f as i64)) {
            Some(exp) if exp > now => Ok(()),
            _ => Err(("invalid_grant", "expired authorization code")),
        }
    }
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let auth = headers.get("authorization")?.to_str().ok()?;
    let raw = base64::engine::general_purpose::STANDARD.decode(auth.strip_prefix("Basic ")?.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((id.to_string(), secret.to_string()))
}

async fn token(
    State(s): State<SalesforceSandbox>,
    headers: HeaderMap,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let latency = s.lock().knobs.latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let Ok(Form(form)) = form else {
        return oauth_error("invalid_request", "the request must be application/x-www-form-urlencoded");
    };
    match form.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {
            let (id, secret) = match (form.get("client_id"), form.get("client_secret")) {
                (Some(id), Some(secret)) => (id.clone(), secret.clone()),
                _ => basic_credentials(&headers).unwrap_or_default(),
            };
            if id != s.auth.client_id {
                return oauth_error("invalid_client", "client identifier invalid");
            }
            if secret != s.auth.client_secret {
                return oauth_error("invalid_client", "invalid client credentials");
            }
            let mut d = s.lock();
            s.issue_token(&mut d, &[("token_format", "opaque")])
        }
        Some("urn:ietf:params:oauth:grant-type:jwt-bearer") => {
            let Some(assertion) = form.get("assertion") else {
                return oauth_error("invalid_grant", "invalid assertion");
            };
            if let Err((error, description)) = s.check_assertion(assertion, Utc::now().timestamp()) {
                return oauth_error(error, description);
            }
            let mut d = s.lock();
            s.issue_token(&mut d, &[("scope", "api")])
        }
        _ => oauth_error("unsupported_grant_type", "grant type not supported"),
    }
}

/// Everything under `/services/data`: version check, latency, session, daily limit,
/// then the resource; `Sforce-Limit-Info` on the way out.
async fn api(
    State(s): State<SalesforceSandbox>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(rest) = uri.path().strip_prefix("/services/data") else {
        return SfError::not_found().response();
    };
    let segments: Vec<String> = rest.split('/').filter(|x| !x.is_empty()).map(percent_decode).collect();
    if segments.is_empty() {
        // The versions list: no session needed, no limit header.
        return reply(
            200,
            json!([
                {"label": "Winter '26", "url": "/services/data/v65.0", "version": "65.0"},
                {"label": "Spring '26", "url": "/services/data/v66.0", "version": "66.0"},
            ]),
        );
    }
    let Some(version_number) = parse_version(&segments[0]) else {
        return SfError::not_found().response();
    };
    let latency = s.lock().knobs.latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let params = Query::<HashMap<String, String>>::try_from_uri(&uri).map(|q| q.0).unwrap_or_default();
    let call = Call { method, version: segments[0].clone(), version_number, params, headers, body };
    let mut d = s.lock();
    let response = match authorize(&mut d, &call.headers) {
        Err(e) => e.response(),
        Ok(()) if d.api_used >= d.knobs.daily_limit => {
            d.limit_refusals += 1;
            SfError::new(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.").response()
        }
        Ok(()) => {
            d.api_used += 1;
            d.api_calls += 1;
            let path: Vec<&str> = segments[1..].iter().map(String::as_str).collect();
            d.current_origin = Some(call.origin());
            let response = route(&mut d, &path, &call).unwrap_or_else(|e| e.response());
            d.current_origin = None;
            response
        }
    };
    let mut response = response;
    let info = format!("api-usage={}/{}", d.api_used, d.knobs.daily_limit);
    response.headers_mut().insert("sforce-limit-info", HeaderValue::from_str(&info).expect("ascii"));
    response
}

fn authorize(d: &mut Data, headers: &HeaderMap) -> Result<(), SfError> {
    let expired = || SfError::new(401, "INVALID_SESSION_ID", "Session expired or invalid");
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
    let token = auth.strip_prefix("Bearer ").or_else(|| auth.strip_prefix("OAuth ")).ok_or_else(expired)?.trim();
    let issued = *d.tokens.get(token).ok_or_else(expired)?;
    if d.knobs.token_ttl.is_some_and(|ttl| issued.elapsed() >= ttl) {
        d.tokens.remove(token);
        return Err(expired());
    }
    Ok(())
}

fn route(d: &mut Data, path: &[&str], c: &Call) -> Result<Response, SfError> {
    let m = &c.method;
    match path {
        [] if m == Method::GET => {
            let base = format!("/services/data/{}", c.version);
            Ok(reply(
                200,
                json!({
                    "sobjects": format!("{base}/sobjects"), "query": format!("{base}/query"),
                    "queryAll": format!("{base}/queryAll"), "limits": format!("{base}/limits"),
                    "composite": format!("{base}/composite"),
                }),
            ))
        }
        ["limits"] if m == Method::GET => {
            let max = d.knobs.daily_limit;
            Ok(reply(200, json!({"DailyApiRequests": {"Max": max, "Remaining": max.saturating_sub(d.api_used)}})))
        }
        ["sobjects"] if m == Method::GET => {
            let types: Vec<Value> = [SObject::Account, SObject::Contact]
                .iter()
                .map(|t| {
                    json!({
                        "name": t.name(), "label": t.name(), "keyPrefix": t.prefix(), "custom": false, "createable": true,
                        "updateable": true, "deletable": true, "queryable": true, "replicateable": true,
                        "urls": {"sobject": format!("/services/data/{}/sobjects/{}", c.version, t.name())},
                    })
                })
                .collect();
            Ok(reply(200, json!({"encoding": "UTF-8", "maxBatchSize": MAX_COLLECTION, "sobjects": types})))
        }
        ["sobjects", t] if m == Method::GET => {
            let t = sobject_or_404(t)?;
            Ok(reply(200, json!({"objectDescribe": describe(d, t), "recentItems": []})))
        }
        ["sobjects", t] if m == Method::POST => {
            let t = sobject_or_404(t)?;
            let body = c.json_object()?;
            if d.lock_row() {
                return Err(Data::lock_row_error(""));
            }
            let user = d.integration_user.clone();
            let id = d.create(t, &body, &user)?;
            Ok(reply(201, json!({"id": id, "success": true, "errors": []})))
        }
        ["sobjects", t, "describe"] if m == Method::GET => Ok(reply(200, describe(d, sobject_or_404(t)?))),
        ["sobjects", t, which @ ("updated" | "deleted")] if m == Method::GET => {
            replication(d, sobject_or_404(t)?, c, *which == "deleted").map(|v| reply(200, v))
        }
        ["sobjects", t, id] if !matches!(*id, "describe" | "updated" | "deleted") => {
            let t = sobject_or_404(t)?;
            single(d, t, id, c)
        }
        ["sobjects", t, field, value] => {
            let t = sobject_or_404(t)?;
            by_external_id(d, t, field, value, c)
        }
        ["composite", "sobjects"] if [Method::POST, Method::PATCH, Method::DELETE].contains(m) => {
            d.collection_calls += 1;
            collections(d, None, c).map(|v| reply(200, v))
        }
        ["composite", "sobjects", t, field] if m == Method::PATCH => {
            d.collection_calls += 1;
            let t = sobject_or_404(t)?;
            collections(d, Some((t, field)), c).map(|v| reply(200, v))
        }
        [kind @ ("query" | "queryAll")] if m == Method::GET => {
            let q = c
                .params
                .get("q")
                .ok_or_else(|| SfError::bad("MALFORMED_QUERY", "A query string has to be specified"))?;
            let mut batch = d.knobs.query_batch_size;
            let options = c.headers.get("sforce-query-options").and_then(|v| v.to_str().ok()).unwrap_or("");
            if let Some(n) =
                options.split(',').find_map(|o| o.trim().strip_prefix("batchSize=")?.trim().parse::<usize>().ok())
            {
                batch = batch.min(n.clamp(200, 2000));
            }
            query(d, q, *kind == "queryAll", batch, &c.version).map(|v| reply(200, v))
        }
        ["query" | "queryAll", locator] if m == Method::GET => {
            query_more(d, locator, &c.version).map(|v| reply(200, v))
        }
        []
        | ["limits"]
        | ["sobjects"]
        | ["sobjects", _]
        | ["sobjects", _, "describe" | "updated" | "deleted"]
        | ["composite", "sobjects", ..]
        | ["query" | "queryAll"]
        | ["query" | "queryAll", _] => {
            Err(SfError::new(405, "METHOD_NOT_ALLOWED", format!("HTTP Method '{m}' not allowed.")))
        }
        _ => Err(SfError::not_found()),
    }
}

fn describe(d: &Data, t: SObject) -> Value {
    let fields: Vec<Value> = d
        .all_fields(t)
        .iter()
        .map(|f| {
            let field = d.resolve(t, f).expect("known field");
            let (kind, length, writable) = match &field {
                FieldRef::System("Id") => ("id", 18, false),
                FieldRef::System("IsDeleted") => ("boolean", 0, false),
                FieldRef::System(n) if DATETIME_FIELDS.contains(n) => ("datetime", 0, false),
                FieldRef::System(_) => ("reference", 18, false),
                FieldRef::Computed(_) => ("string", 121, false),
                FieldRef::Standard("Email", max) => ("email", *max, true),
                FieldRef::Standard("AccountId", _) => ("reference", 18, true),
                FieldRef::Standard(_, max) => ("string", *max, true),
                FieldRef::Custom(_) => ("string", 255, true),
            };
            let external = d.external_fields[&t].contains(f);
            json!({
                "name": f, "type": kind, "length": length, "custom": matches!(field, FieldRef::Custom(_)),
                "externalId": external, "unique": external && d.knobs.unique_external_id, "caseSensitive": false,
                "idLookup": external || f == "Id", "nillable": !(t.required().contains(&f.as_str()) || matches!(field, FieldRef::System(_))),
                "createable": writable, "updateable": writable,
            })
        })
        .collect();
    json!({"name": t.name(), "label": t.name(), "keyPrefix": t.prefix(), "custom": false, "createable": true,
        "updateable": true, "deletable": true, "queryable": true, "replicateable": true, "fields": fields})
}

/// `GET|PATCH|DELETE /sobjects/{T}/{Id}`.
fn single(d: &mut Data, t: SObject, raw: &str, c: &Call) -> Result<Response, SfError> {
    let id = d.lookup(t, raw).map_err(|m| m.single(raw))?.0;
    match c.method {
        Method::GET => {
            let fields = match c.params.get("fields") {
                None => None,
                Some(list) => Some(
                    list.split(',')
                        .map(|f| {
                            d.resolve(t, f.trim())
                                .map(|r| r.name().to_string())
                                .ok_or_else(|| Data::invalid_field(t, f.trim()))
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                ),
            };
            let row = &d.table(t)[&id];
            Ok(reply(200, d.view(t, row, &c.version, fields.as_deref())))
        }
        Method::PATCH => {
            let body = c.json_object()?;
            if d.lock_row() {
                return Err(Data::lock_row_error(&id));
            }
            let user = d.integration_user.clone();
            d.update(t, &id, &body, &user)?;
            Ok(no_content())
        }
        Method::DELETE => {
            if d.lock_row() {
                return Err(Data::lock_row_error(&id));
            }
            let user = d.integration_user.clone();
            d.delete(t, &id, &user);
            Ok(no_content())
        }
        _ => Err(SfError::new(
            405,
            "METHOD_NOT_ALLOWED",
            format!("HTTP Method '{}' not allowed. Allowed are GET,PATCH,DELETE", c.method),
        )),
    }
}

/// `PATCH|GET|DELETE /sobjects/{T}/{ExternalIdField}/{value}` (upsert, read, delete).
fn by_external_id(d: &mut Data, t: SObject, field: &str, value: &str, c: &Call) -> Result<Response, SfError> {
    let missing_field = || SfError::new(404, "NOT_FOUND", "The requested resource does not exist");
    let by_id = field.eq_ignore_ascii_case("Id");
    let field = match d.external_field(t, field) {
        Some(f) => f,
        None if by_id => "Id".to_string(),
        None => return Err(missing_field()),
    };
    let user = d.integration_user.clone();
    if c.method == Method::PATCH {
        let body = c.json_object()?;
        if body.keys().any(|k| k.eq_ignore_ascii_case("Id")) {
            return Err(SfError::bad(
                "INVALID_FIELD",
                "Id isn't allowed in the body of an upsert: the record is named in the URL",
            )
            .fields(&["Id"]));
        }
        if body.keys().any(|k| k.eq_ignore_ascii_case(&field)) {
            return Err(SfError::bad(
                "INVALID_FIELD",
                format!("{field} isn't allowed in the body of an upsert by {field}: the value is in the URL"),
            )
            .fields(&[&field]));
        }
        if d.lock_row() {
            return Err(Data::lock_row_error(""));
        }
        let (id, created) = if by_id {
            let id = d.lookup(t, value).map_err(|m| m.single(value))?.0;
            d.update(t, &id, &body, &user)?;
            (id, false)
        } else {
            d.upsert(t, &field, value, &body, &user, c.flag("updateOnly")).map_err(|mut e| {
                if e.status == 300 {
                    e.fields = e.fields.iter().map(|id| c.url(t, id)).collect();
                }
                e
            })?
        };
        return Ok(match (created, c.version_number >= 46.0) {
            (true, _) => reply(201, json!({"id": id, "success": true, "errors": [], "created": true})),
            (false, true) => reply(200, json!({"id": id, "success": true, "errors": [], "created": false})),
            // Before v46 an update by external id answered 204 without a body.
            (false, false) => no_content(),
        });
    }
    let id = if by_id {
        d.lookup(t, value).map_err(|m| m.single(value))?.0
    } else {
        match d.find_external(t, &field, value).as_slice() {
            [] => return Err(SfError::not_found()),
            [id] => id.clone(),
            many => {
                let mut e = SfError::new(300, "DUPLICATE_EXTERNAL_ID", "more than one record found");
                e.fields = many.iter().map(|id| c.url(t, id)).collect();
                return Err(e);
            }
        }
    };
    match c.method {
        Method::GET => Ok(reply(200, d.view(t, &d.table(t)[&id], &c.version, None))),
        Method::DELETE => {
            if d.lock_row() {
                return Err(Data::lock_row_error(&id));
            }
            d.delete(t, &id, &user);
            Ok(no_content())
        }
        _ => Err(SfError::new(
            405,
            "METHOD_NOT_ALLOWED",
            format!("HTTP Method '{}' not allowed. Allowed are GET,PATCH,DELETE", c.method),
        )),
    }
}

/// One record of a collection request: its type (unknown for a malformed id), the id
/// it names, and its body.
type CollectionItem = (Option<SObject>, Option<String>, Map<String, Value>);

/// sObject Collections: create (POST), update (PATCH), upsert (PATCH with a type and an
/// external-id field), delete (DELETE `?ids=`). One result per item, in order.
fn collections(d: &mut Data, upsert: Option<(SObject, &str)>, c: &Call) -> Result<Value, SfError> {
    let too_many = || {
        SfError::bad(
            "EXCEEDED_ID_LIMIT",
            format!("record limit reached. cannot submit more than {MAX_COLLECTION} records into this call"),
        )
    };
    let user = d.integration_user.clone();
    let mut items: Vec<CollectionItem> = Vec::new();
    let all_or_none;
    if c.method == Method::DELETE {
        let ids = c.params.get("ids").map(String::as_str).unwrap_or("");
        if ids.trim().is_empty() {
            return Err(SfError::bad("MISSING_ARGUMENT", "ids parameter is required"));
        }
        let ids: Vec<&str> = ids.split(',').map(str::trim).collect();
        if ids.len() > MAX_COLLECTION {
            return Err(too_many());
        }
        all_or_none = c.flag("allOrNone");
        for id in ids {
            let t = normalize_id(id).and_then(|n| SObject::from_id(&n));
            items.push((t, Some(id.to_string()), Map::new()));
        }
    } else {
        let body = c.json_object()?;
        let records = body
            .get("records")
            .and_then(Value::as_array)
            .ok_or_else(|| SfError::bad("JSON_PARSER_ERROR", "the body needs a records array"))?;
        if records.len() > MAX_COLLECTION {
            return Err(too_many());
        }
        all_or_none = body.get("allOrNone").and_then(Value::as_bool).unwrap_or(false);
        for record in records {
            let record = record
                .as_object()
                .ok_or_else(|| SfError::bad("JSON_PARSER_ERROR", "each record must be a JSON object"))?;
            let kind = record.get("attributes").and_then(|a| a.get("type")).and_then(Value::as_str);
            let t = match (kind, upsert) {
                (Some(k), _) => Some(
                    SObject::parse(k)
                        .ok_or_else(|| SfError::bad("INVALID_TYPE", format!("sObject type '{k}' is not supported.")))?,
                ),
                (None, Some((t, _))) => Some(t),
                (None, None) => return Err(SfError::bad("INVALID_TYPE", "Must send a concrete entity type.")),
            };
            let id = record.iter().find(|(k, _)| k.eq_ignore_ascii_case("Id")).and_then(|(_, v)| text_of(v));
            items.push((t, id, record.clone()));
        }
    }
    let upsert_field = match upsert {
        Some((t, f)) => Some(d.external_field(t, f).ok_or_else(SfError::not_found)?),
        None => None,
    };
    let upsert_field = upsert_field.as_deref();
    // An external id twice in one upsert request fails both items, as Salesforce does.
    let mut seen: HashMap<String, usize> = HashMap::new();
    if upsert_field.is_some() {
        for (_, _, body) in &items {
            let field = upsert_field.unwrap_or_default();
            if let Some(v) = body.iter().find(|(k, _)| k.eq_ignore_ascii_case(field)).and_then(|(_, v)| text_of(v)) {
                *seen.entry(v.to_lowercase()).or_default() += 1;
            }
        }
    }
    if all_or_none {
        d.journal = Some(Vec::new());
    }
    let mut results: Vec<Result<Value, (Option<String>, SfError)>> = Vec::with_capacity(items.len());
    for (t, id, body) in &items {
        let result = (|| -> Result<Value, (Option<String>, SfError)> {
            let t = t.ok_or_else(|| {
                (id.clone(), SfError::bad("MALFORMED_ID", format!("malformed id {}", id.as_deref().unwrap_or(""))))
            })?;
            match (&c.method, upsert_field) {
                (&Method::POST, _) => {
                    if d.lock_row() {
                        return Err((None, Data::lock_row_error("")));
                    }
                    let new = d.create(t, body, &user).map_err(|e| (None, e))?;
                    Ok(json!({"id": new, "success": true, "errors": []}))
                }
                (&Method::PATCH, None) => {
                    let raw = id.clone().ok_or_else(|| {
                        (None, SfError::bad("MISSING_ARGUMENT", "Id not specified in an update call"))
                    })?;
                    let found = d.lookup(t, &raw).map_err(|m| (Some(raw.clone()), m.item(t, &raw)))?.0;
                    if d.lock_row() {
                        return Err((Some(found.clone()), Data::lock_row_error(&found)));
                    }
                    d.update(t, &found, body, &user).map_err(|e| (Some(found.clone()), e))?;
                    Ok(json!({"id": found, "success": true, "errors": []}))
                }
                (&Method::PATCH, Some(field)) => {
                    let value = body
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(field))
                        .and_then(|(_, v)| text_of(v))
                        .filter(|v| !v.is_empty())
                        .ok_or_else(|| {
                            (None, SfError::bad("MISSING_ARGUMENT", format!("{field} not specified")).fields(&[field]))
                        })?;
                    if seen.get(&value.to_lowercase()).copied().unwrap_or(0) > 1 {
                        return Err((
                            None,
                            SfError::bad("DUPLICATE_EXTERNAL_ID", format!("Duplicate external id specified: {value}"))
                                .fields(&[field]),
                        ));
                    }
                    if body.keys().any(|k| k.eq_ignore_ascii_case("Id")) {
                        return Err((
                            None,
                            SfError::bad("INVALID_FIELD", "Id isn't allowed in an upsert by external id")
                                .fields(&["Id"]),
                        ));
                    }
                    if d.lock_row() {
                        return Err((None, Data::lock_row_error("")));
                    }
                    let mut rest = body.clone();
                    rest.retain(|k, _| !k.eq_ignore_ascii_case(field));
                    let (new, created) = d.upsert(t, field, &value, &rest, &user, false).map_err(|mut e| {
                        e.status = 400;
                        if e.code == "DUPLICATE_EXTERNAL_ID" {
                            e.fields = vec![field.to_string()];
                        }
                        (None, e)
                    })?;
                    Ok(json!({"id": new, "success": true, "errors": [], "created": created}))
                }
                (&Method::DELETE, _) => {
                    let raw = id.clone().unwrap_or_default();
                    let found = d.lookup(t, &raw).map_err(|m| (Some(raw.clone()), m.item(t, &raw)))?.0;
                    if d.lock_row() {
                        return Err((Some(found.clone()), Data::lock_row_error(&found)));
                    }
                    d.delete(t, &found, &user);
                    Ok(json!({"id": found, "success": true, "errors": []}))
                }
                _ => Err((None, SfError::new(405, "METHOD_NOT_ALLOWED", "method not allowed"))),
            }
        })();
        results.push(result);
    }
    let journal = d.journal.take();
    let failed = results.iter().any(Result::is_err);
    if let (Some(journal), true) = (journal, failed) {
        d.roll_back(journal);
    }
    let rolled_back = all_or_none && failed;
    Ok(Value::Array(
        results
            .into_iter()
            .map(|r| match r {
                Ok(mut ok) if rolled_back => {
                    let mut out = json!({"success": false, "errors": [SfError::bad("ALL_OR_NONE_OPERATION_ROLLED_BACK", ROLLED_BACK).item()]});
                    if c.method != Method::POST && upsert_field.is_none() {
                        out["id"] = ok["id"].take();
                    }
                    out
                }
                Ok(ok) => ok,
                Err((id, e)) => {
                    let mut out = json!({"success": false, "errors": [e.item()]});
                    if let Some(id) = id {
                        out["id"] = json!(id);
                    }
                    out
                }
            })
            .collect(),
    ))
}

/// `/updated/` and `/deleted/`: start and end truncated to the minute, at most 30 days
/// back; `latestDateCovered` is the end, or this minute's start if the end is later.
fn replication(d: &Data, t: SObject, c: &Call, deleted: bool) -> Result<Value, SfError> {
    let param = |name: &str| -> Result<DateTime<Utc>, SfError> {
        let raw = c
            .params
            .get(name)
            .ok_or_else(|| SfError::bad("MISSING_ARGUMENT", format!("{name} parameter is required")))?;
        parse_time(raw)
            .map(floor_minute)
            .ok_or_else(|| SfError::bad("INVALID_REPLICATION_DATE", format!("{name} is not a valid date/time: {raw}")))
    };
    let (start, end) = (param("start")?, param("end")?);
    let now = d.now();
    if start < now - chrono::Duration::days(30) {
        return Err(SfError::bad("INVALID_REPLICATION_DATE", "startDate cannot be more than 30 days ago"));
    }
    if end <= start {
        return Err(SfError::bad("INVALID_REPLICATION_DATE", "EndDate can not be before StartDate"));
    }
    let covered = end.min(floor_minute(now));
    let table = d.table(t);
    if deleted {
        let records: Vec<Value> = table
            .iter()
            .filter_map(|(id, r)| r.deleted_at.map(|at| (id, at)))
            .filter(|(_, at)| *at >= start && *at < covered)
            .map(|(id, at)| json!({"id": id, "deletedDate": format_time(at)}))
            .collect();
        Ok(json!({
            "deletedRecords": records,
            "earliestDateAvailable": format_time(d.earliest_deleted),
            "latestDateCovered": format_time(covered),
        }))
    } else {
        let ids: Vec<&String> = table
            .iter()
            .filter(|(_, r)| r.deleted_at.is_none() && r.modstamp >= start && r.modstamp < covered)
            .map(|(id, _)| id)
            .collect();
        Ok(json!({"ids": ids, "latestDateCovered": format_time(covered)}))
    }
}

// ---------------------------------------------------------------------------------------
// SOQL subset

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Num(f64),
    Time(DateTime<Utc>),
    Comma,
    Open,
    Close,
    Op(&'static str),
}

#[derive(Debug, Clone, PartialEq)]
enum Lit {
    Str(String),
    Num(f64),
    Bool(bool),
    Null,
    Time(DateTime<Utc>),
}

#[derive(Debug)]
enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Cmp(String, &'static str, Lit),
    In(String, bool, Vec<Lit>),
}

struct Soql {
    sobject: SObject,
    fields: Vec<String>,
    filter: Option<Expr>,
    /// Field, descending, nulls first.
    order: Vec<(String, bool, bool)>,
    limit: Option<usize>,
    offset: usize,
}

fn malformed(message: impl Into<String>) -> SfError {
    SfError::bad("MALFORMED_QUERY", message)
}

fn lex(q: &str) -> Result<Vec<Tok>, SfError> {
    let chars: Vec<char> = q.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match c {
            c if c.is_whitespace() => i += 1,
            ',' => (out.push(Tok::Comma), i += 1).1,
            '(' => (out.push(Tok::Open), i += 1).1,
            ')' => (out.push(Tok::Close), i += 1).1,
            '=' => (out.push(Tok::Op("=")), i += 1).1,
            '!' if next == Some('=') => (out.push(Tok::Op("!=")), i += 2).1,
            '<' if next == Some('>') => (out.push(Tok::Op("!=")), i += 2).1,
            '<' if next == Some('=') => (out.push(Tok::Op("<=")), i += 2).1,
            '<' => (out.push(Tok::Op("<")), i += 1).1,
            '>' if next == Some('=') => (out.push(Tok::Op(">=")), i += 2).1,
            '>' => (out.push(Tok::Op(">")), i += 1).1,
            '\'' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(malformed("unterminated string literal")),
                        Some('\'') => break,
                        Some('\\') => {
                            let e = chars.get(i + 1).ok_or_else(|| malformed("unterminated string literal"))?;
                            s.push(match e {
                                'n' => '\n',
                                't' => '\t',
                                'r' => '\r',
                                other => *other,
                            });
                            i += 2;
                        }
                        Some(ch) => {
                            s.push(*ch);
                            i += 1;
                        }
                    }
                }
                i += 1;
                out.push(Tok::Str(s));
            }
            c if c.is_ascii_digit() || (c == '-' && next.is_some_and(|n| n.is_ascii_digit())) => {
                let start = i;
                i += 1;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || ":.+-".contains(chars[i])) {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                if text.contains('T') {
                    out.push(Tok::Time(parse_time(&text).ok_or_else(|| {
                        malformed(format!("line 1:{start} no viable alternative at character '{text}'"))
                    })?));
                } else {
                    out.push(Tok::Num(text.parse().map_err(|_| malformed(format!("unexpected token: '{text}'")))?));
                }
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '.') {
                    i += 1;
                }
                out.push(Tok::Word(chars[start..i].iter().collect()));
            }
            other => return Err(malformed(format!("unexpected token: '{other}'"))),
        }
    }
    Ok(out)
}

struct Parser<'a> {
    toks: Vec<Tok>,
    pos: usize,
    data: &'a Data,
    sobject: SObject,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn keyword(&mut self, kw: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(kw)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, kw: &str) -> Result<(), SfError> {
        if self.keyword(kw) {
            Ok(())
        } else {
            Err(self.unexpected())
        }
    }

    fn unexpected(&self) -> SfError {
        match self.peek() {
            None => malformed("unexpected end of query"),
            Some(t) => malformed(format!("unexpected token: {}", describe_tok(t))),
        }
    }

    fn field(&mut self) -> Result<String, SfError> {
        match self.peek().cloned() {
            Some(Tok::Word(w)) => {
                self.pos += 1;
                if w.contains('.') {
                    return Err(malformed(format!("relationship fields are not supported by this sandbox: {w}")));
                }
                self.data
                    .resolve(self.sobject, &w)
                    .map(|f| f.name().to_string())
                    .ok_or_else(|| SfError::bad("INVALID_FIELD", format!("No such column '{w}' on entity '{}'. If you are attempting to use a custom field, be sure to append the '__c' after the custom field name.", self.sobject.name())))
            }
            _ => Err(self.unexpected()),
        }
    }

    fn literal(&mut self, field: &str) -> Result<Lit, SfError> {
        let lit = match self.peek().cloned() {
            Some(Tok::Str(s)) => Lit::Str(s),
            Some(Tok::Num(n)) => Lit::Num(n),
            Some(Tok::Time(t)) => Lit::Time(t),
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("true") => Lit::Bool(true),
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("false") => Lit::Bool(false),
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("null") => Lit::Null,
            _ => return Err(self.unexpected()),
        };
        self.pos += 1;
        // Literal types are checked against the field's type, as Salesforce does.
        let wrong = |kind: &str, quoted: &str| {
            SfError::bad(
                "INVALID_FIELD",
                format!("value of filter criterion for field '{field}' must be of type {kind} and should {quoted}"),
            )
        };
        let is_custom = field.to_ascii_lowercase().ends_with("__c");
        match (&lit, field) {
            (Lit::Null, _) => Ok(lit),
            (Lit::Time(_), f) if DATETIME_FIELDS.contains(&f) => Ok(lit),
            (_, f) if DATETIME_FIELDS.contains(&f) => Err(wrong("dateTime", "not be enclosed in quotes")),
            (Lit::Bool(_), "IsDeleted") => Ok(lit),
            (_, "IsDeleted") => Err(wrong("boolean", "not be enclosed in quotes")),
            (_, _) if is_custom => Ok(lit),
            (Lit::Str(s), "Id" | "AccountId" | "CreatedById" | "LastModifiedById") => {
                Ok(Lit::Str(normalize_id(s).unwrap_or_else(|| s.clone())))
            }
            (Lit::Str(_), _) => Ok(lit),
            _ => Err(wrong("string", "be enclosed in quotes")),
        }
    }

    fn or(&mut self) -> Result<Expr, SfError> {
        let mut left = self.and()?;
        while self.keyword("OR") {
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, SfError> {
        let mut left = self.unary()?;
        while self.keyword("AND") {
            left = Expr::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, SfError> {
        if self.keyword("NOT") {
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        if self.peek() == Some(&Tok::Open) {
            self.pos += 1;
            let e = self.or()?;
            if self.peek() != Some(&Tok::Close) {
                return Err(self.unexpected());
            }
            self.pos += 1;
            return Ok(e);
        }
        let field = self.field()?;
        let negated = self.keyword("NOT");
        if self.keyword("IN") {
            if self.peek() != Some(&Tok::Open) {
                return Err(self.unexpected());
            }
            self.pos += 1;
            let mut values = vec![self.literal(&field)?];
            while self.peek() == Some(&Tok::Comma) {
                self.pos += 1;
                values.push(self.literal(&field)?);
            }
            if self.peek() != Some(&Tok::Close) {
                return Err(self.unexpected());
            }
            self.pos += 1;
            return Ok(Expr::In(field, negated, values));
        }
        if negated {
            return Err(self.unexpected());
        }
        if self.keyword("LIKE") {
            let lit = self.literal(&field)?;
            return Ok(Expr::Cmp(field, "LIKE", lit));
        }
        let op = match self.peek() {
            Some(Tok::Op(op)) => *op,
            _ => return Err(self.unexpected()),
        };
        self.pos += 1;
        let lit = self.literal(&field)?;
        Ok(Expr::Cmp(field, op, lit))
    }

    fn number(&mut self) -> Result<usize, SfError> {
        match self.peek() {
            Some(Tok::Num(n)) if *n >= 0.0 && n.fract() == 0.0 => {
                let n = *n as usize;
                self.pos += 1;
                Ok(n)
            }
            _ => Err(self.unexpected()),
        }
    }
}

fn describe_tok(t: &Tok) -> String {
    match t {
        Tok::Word(w) => w.clone(),
        Tok::Str(s) => format!("'{s}'"),
        Tok::Num(n) => n.to_string(),
        Tok::Time(t) => format_time(*t),
        Tok::Comma => ",".into(),
        Tok::Open => "(".into(),
        Tok::Close => ")".into(),
        Tok::Op(o) => o.to_string(),
    }
}

fn parse_soql(d: &Data, q: &str) -> Result<Soql, SfError> {
    let toks = lex(q)?;
    // The type is needed to resolve field names, so find it first.
    let from = toks
        .iter()
        .position(|t| matches!(t, Tok::Word(w) if w.eq_ignore_ascii_case("FROM")))
        .ok_or_else(|| malformed("unexpected end of query: FROM expected"))?;
    let sobject = match toks.get(from + 1) {
        Some(Tok::Word(w)) => SObject::parse(w).ok_or_else(|| {
            SfError::bad("INVALID_TYPE", format!("sObject type '{w}' is not supported. If you are attempting to use a custom object, be sure to append the '__c' after the entity name."))
        })?,
        _ => return Err(malformed("unexpected end of query: object name expected")),
    };
    let mut p = Parser { toks, pos: 0, data: d, sobject };
    p.expect("SELECT")?;
    if matches!(p.toks.get(1), Some(Tok::Word(w)) if w.eq_ignore_ascii_case("COUNT") || w.eq_ignore_ascii_case("FIELDS"))
    {
        return Err(malformed("aggregate and FIELDS() queries are not supported by this sandbox"));
    }
    let mut fields = vec![p.field()?];
    while p.peek() == Some(&Tok::Comma) {
        p.pos += 1;
        fields.push(p.field()?);
    }
    p.expect("FROM")?;
    p.pos += 1;
    let filter = if p.keyword("WHERE") { Some(p.or()?) } else { None };
    let mut order = Vec::new();
    if p.keyword("ORDER") {
        p.expect("BY")?;
        loop {
            let field = p.field()?;
            let desc = if p.keyword("DESC") {
                true
            } else {
                p.keyword("ASC");
                false
            };
            let mut nulls_first = !desc;
            if p.keyword("NULLS") {
                nulls_first = if p.keyword("FIRST") {
                    true
                } else {
                    p.expect("LAST")?;
                    false
                };
            }
            order.push((field, desc, nulls_first));
            if p.peek() != Some(&Tok::Comma) {
                break;
            }
            p.pos += 1;
        }
    }
    let limit = if p.keyword("LIMIT") { Some(p.number()?) } else { None };
    let offset = if p.keyword("OFFSET") { p.number()? } else { 0 };
    if offset > 2000 {
        return Err(SfError::bad("NUMBER_OUTSIDE_VALID_RANGE", "Maximum SOQL offset allowed is 2000"));
    }
    if p.pos != p.toks.len() {
        return Err(p.unexpected());
    }
    Ok(Soql { sobject, fields, filter, order, limit, offset })
}

/// Compares a stored value with a literal; `None` when they can't be compared.
/// Id fields compare exactly (ids are case-sensitive); other text ignores case.
const ID_FIELDS: &[&str] = &["Id", "AccountId", "CreatedById", "LastModifiedById"];

fn compare(v: &Value, lit: &Lit, exact: bool) -> Option<Ordering> {
    match lit {
        Lit::Time(t) => v.as_str().and_then(parse_time).map(|x| x.cmp(t)),
        Lit::Str(s) if exact => text_of(v).map(|x| x.as_str().cmp(s.as_str())),
        Lit::Str(s) => text_of(v).map(|x| x.to_lowercase().cmp(&s.to_lowercase())),
        Lit::Num(n) => match v {
            Value::Number(x) => x.as_f64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
        .and_then(|x| x.partial_cmp(n)),
        Lit::Bool(b) => v.as_bool().map(|x| x.cmp(b)),
        Lit::Null => None,
    }
}

/// SOQL LIKE: `%` any run, `_` one character, case-insensitive.
fn like(text: &str, pattern: &str) -> bool {
    fn go(t: &[char], p: &[char]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some(('%', rest)) => (0..=t.len()).any(|i| go(&t[i..], rest)),
            Some(('_', rest)) => !t.is_empty() && go(&t[1..], rest),
            Some((c, rest)) => t.first() == Some(c) && go(&t[1..], rest),
        }
    }
    let t: Vec<char> = text.to_lowercase().chars().collect();
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    go(&t, &p)
}

fn eval(d: &Data, t: SObject, row: &Row, e: &Expr) -> bool {
    match e {
        Expr::And(a, b) => eval(d, t, row, a) && eval(d, t, row, b),
        Expr::Or(a, b) => eval(d, t, row, a) || eval(d, t, row, b),
        Expr::Not(a) => !eval(d, t, row, a),
        Expr::In(f, negated, list) => {
            let v = d.value(t, row, f);
            let exact = ID_FIELDS.contains(&f.as_str());
            let hit = list.iter().any(|l| matches_eq(&v, l, exact));
            hit != *negated
        }
        Expr::Cmp(f, op, lit) => {
            let v = d.value(t, row, f);
            let exact = ID_FIELDS.contains(&f.as_str());
            match (*op, lit) {
                ("=", _) => matches_eq(&v, lit, exact),
                ("!=", _) => !matches_eq(&v, lit, exact),
                ("LIKE", Lit::Str(p)) => text_of(&v).is_some_and(|s| like(&s, p)),
                (_, Lit::Null) => false,
                _ => match compare(&v, lit, exact) {
                    Some(o) => match *op {
                        "<" => o == Ordering::Less,
                        "<=" => o != Ordering::Greater,
                        ">" => o == Ordering::Greater,
                        ">=" => o != Ordering::Less,
                        _ => false,
                    },
                    None => false,
                },
            }
        }
    }
}

fn matches_eq(v: &Value, lit: &Lit, exact: bool) -> bool {
    match lit {
        Lit::Null => v.is_null(),
        _ => compare(v, lit, exact) == Some(Ordering::Equal),
    }
}

fn order_values(a: &Value, b: &Value, nulls_first: bool, exact: bool) -> Ordering {
    match (a.is_null(), b.is_null()) {
        (true, true) => Ordering::Equal,
        (true, false) => {
            if nulls_first {
                Ordering::Less
            } else {
                Ordering::Greater
            }
        }
        (false, true) => {
            if nulls_first {
                Ordering::Greater
            } else {
                Ordering::Less
            }
        }
        _ => match (a, b) {
            (Value::Number(x), Value::Number(y)) => x.as_f64().partial_cmp(&y.as_f64()).unwrap_or(Ordering::Equal),
            (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
            _ => {
                let (x, y) = (text_of(a).unwrap_or_default(), text_of(b).unwrap_or_default());
                if exact {
                    x.cmp(&y)
                } else {
                    x.to_lowercase().cmp(&y.to_lowercase()).then(x.cmp(&y))
                }
            }
        },
    }
}

/// One page of a query result; `cursor` names the stored result when there is more.
fn page(rows: &[Value], offset: usize, batch: usize, cursor: Option<&str>, version: &str) -> Value {
    let total = rows.len();
    let end = (offset + batch).min(total);
    let mut out = json!({"totalSize": total, "done": end >= total});
    if let (Some(c), true) = (cursor, end < total) {
        out["nextRecordsUrl"] = json!(format!("/services/data/{version}/query/{c}-{end}"));
    }
    out["records"] = Value::Array(rows[offset.min(total)..end].to_vec());
    out
}

fn query(d: &mut Data, q: &str, all: bool, batch: usize, version: &str) -> Result<Value, SfError> {
    let soql = parse_soql(d, q)?;
    let t = soql.sobject;
    let mut rows: Vec<&Row> = d
        .table(t)
        .values()
        .filter(|r| all || r.deleted_at.is_none())
        .filter(|r| soql.filter.as_ref().is_none_or(|f| eval(d, t, r, f)))
        .collect();
    rows.sort_by(|a, b| {
        soql.order
            .iter()
            .map(|(f, desc, nulls_first)| {
                let exact = ID_FIELDS.contains(&f.as_str());
                let o = order_values(&d.value(t, a, f), &d.value(t, b, f), *nulls_first != *desc, exact);
                if *desc {
                    o.reverse()
                } else {
                    o
                }
            })
            .find(|o| *o != Ordering::Equal)
            .unwrap_or(Ordering::Equal)
    });
    let rows: Vec<Value> = rows
        .into_iter()
        .skip(soql.offset)
        .take(soql.limit.unwrap_or(usize::MAX))
        .map(|r| d.view(t, r, version, Some(&soql.fields)))
        .collect();
    if rows.len() <= batch {
        return Ok(page(&rows, 0, batch, None, version));
    }
    // The result is kept for nextRecordsUrl (Salesforce keeps cursors a while, too).
    let id = d.next_id("01g");
    let first = page(&rows, 0, batch, Some(&id), version);
    d.cursors.push_back(Cursor { id, rows, batch });
    while d.cursors.len() > 50 {
        d.cursors.pop_front();
    }
    Ok(first)
}

fn query_more(d: &Data, locator: &str, version: &str) -> Result<Value, SfError> {
    let invalid = || SfError::bad("INVALID_QUERY_LOCATOR", "invalid query locator");
    let (cursor, offset) = locator.rsplit_once('-').ok_or_else(invalid)?;
    let offset: usize = offset.parse().map_err(|_| invalid())?;
    let found = d.cursors.iter().find(|c| c.id == cursor).ok_or_else(invalid)?;
    if offset > found.rows.len() {
        return Err(invalid());
    }
    Ok(page(&found.rows, offset, found.batch, Some(cursor), version))
}

// ---------------------------------------------------------------------------------------
// Admin API (not Salesforce's)

async fn admin_create(State(s): State<SalesforceSandbox>, Path(sobject): Path<String>, body: Bytes) -> Response {
    let fields: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match s.ui_try_create(&sobject, &fields) {
        Ok(id) => reply(201, json!({"id": id, "success": true, "errors": []})),
        Err(e) => e.response(),
    }
}

async fn admin_update(
    State(s): State<SalesforceSandbox>,
    Path((sobject, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let fields: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match s.ui_try_update(&sobject, &id, &fields) {
        Ok(()) => no_content(),
        Err(e) => e.response(),
    }
}

async fn admin_delete(State(s): State<SalesforceSandbox>, Path((sobject, id)): Path<(String, String)>) -> Response {
    match s.ui_try_delete(&sobject, &id) {
        Ok(()) => no_content(),
        Err(e) => e.response(),
    }
}

async fn admin_undelete(State(s): State<SalesforceSandbox>, Path((sobject, id)): Path<(String, String)>) -> Response {
    let deleted = s.record(&sobject, &id).is_some_and(|r| r["IsDeleted"] == true);
    if !deleted {
        return SfError::not_found().response();
    }
    s.ui_undelete(&sobject, &id);
    no_content()
}

async fn admin_get(State(s): State<SalesforceSandbox>, Path((sobject, id)): Path<(String, String)>) -> Response {
    match s.record(&sobject, &id) {
        Some(r) => reply(200, r),
        None => SfError::not_found().response(),
    }
}

async fn admin_list(State(s): State<SalesforceSandbox>, Path(sobject): Path<String>) -> Response {
    match SObject::parse(&sobject) {
        Some(_) => reply(200, json!(s.records(&sobject))),
        None => SfError::not_found().response(),
    }
}

fn knobs_json(s: &SalesforceSandbox) -> Value {
    let stats = s.stats();
    let d = s.lock();
    json!({
        "api_used": d.api_used, "daily_limit": d.knobs.daily_limit,
        "token_ttl_secs": d.knobs.token_ttl.map(|t| t.as_secs_f64()), "lock_row_rate": d.knobs.lock_row_rate,
        "latency_ms": d.knobs.latency.as_millis() as u64, "query_batch_size": d.knobs.query_batch_size,
        "unique_external_id": d.knobs.unique_external_id, "clock_offset_secs": d.knobs.clock_offset.num_seconds(),
        "stats": {"api_calls": stats.api_calls, "collection_calls": stats.collection_calls, "records": stats.records,
            "limit_refusals": stats.limit_refusals, "tokens_issued": stats.tokens_issued, "lock_row_errors": stats.lock_row_errors},
    })
}

/// `POST /_sandbox/knobs` with any of `api_used`, `daily_limit`, `token_ttl_secs`
/// (null: never), `expire_tokens`, `lock_row_rate`, `latency_ms`, `query_batch_size`,
/// `unique_external_id`, `advance_clock_secs`, `purge_deleted`; answers the knobs.
async fn admin_knobs(State(s): State<SalesforceSandbox>, body: Bytes) -> Response {
    let Ok(Value::Object(k)) = serde_json::from_slice::<Value>(&body) else {
        return SfError::bad("JSON_PARSER_ERROR", "a JSON object of knobs is expected").response();
    };
    let known = [
        "api_used",
        "daily_limit",
        "token_ttl_secs",
        "expire_tokens",
        "lock_row_rate",
        "latency_ms",
        "query_batch_size",
        "unique_external_id",
        "advance_clock_secs",
        "purge_deleted",
    ];
    if let Some(unknown) = k.keys().find(|key| !known.contains(&key.as_str())) {
        return SfError::bad("INVALID_FIELD", format!("unknown knob {unknown}; known: {}", known.join(", ")))
            .response();
    }
    let u64_of = |name: &str| k.get(name).and_then(Value::as_u64);
    if let Some(n) = u64_of("api_used") {
        s.set_api_used(n);
    }
    if let Some(n) = u64_of("daily_limit") {
        s.set_daily_limit(n);
    }
    if let Some(v) = k.get("token_ttl_secs") {
        s.lock().knobs.token_ttl = v.as_f64().map(|f| Duration::from_secs_f64(f.max(0.0)));
    }
    if k.get("expire_tokens").and_then(Value::as_bool) == Some(true) {
        s.expire_tokens();
    }
    if let Some(r) = k.get("lock_row_rate").and_then(Value::as_f64) {
        s.set_lock_row_rate(r);
    }
    if let Some(ms) = u64_of("latency_ms") {
        s.set_latency(Duration::from_millis(ms));
    }
    if let Some(n) = u64_of("query_batch_size") {
        s.lock().knobs.query_batch_size = (n as usize).max(1);
    }
    if let Some(b) = k.get("unique_external_id").and_then(Value::as_bool) {
        s.set_unique_external_id(b);
    }
    if let Some(secs) = u64_of("advance_clock_secs") {
        s.advance_clock(Duration::from_secs(secs));
    }
    if k.get("purge_deleted").and_then(Value::as_bool) == Some(true) {
        s.purge_deleted();
    }
    reply(200, knobs_json(&s))
}

async fn admin_stats(State(s): State<SalesforceSandbox>) -> Response {
    reply(200, knobs_json(&s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_safe_suffix_matches_salesforce() {
        // A documented example: 0015000000Gv7qJ → 0015000000Gv7qJAAR.
        assert_eq!(id18("0015000000Gv7qJ"), "0015000000Gv7qJAAR");
        assert_eq!(normalize_id("0015000000Gv7qJ").as_deref(), Some("0015000000Gv7qJAAR"));
        // An 18-character id in the wrong case is restored from its suffix.
        assert_eq!(normalize_id("0015000000GV7QJAAR").as_deref(), Some("0015000000Gv7qJAAR"));
        assert_eq!(normalize_id("001"), None);
    }

    #[test]
    fn soql_literals_lex() {
        let toks =
            lex("SELECT Id FROM Contact WHERE SystemModstamp > 2026-05-20T20:49:32.000+0000 AND x__c = -5").unwrap();
        assert!(toks.contains(&Tok::Time(parse_time("2026-05-20T20:49:32Z").unwrap())));
        assert!(toks.contains(&Tok::Num(-5.0)));
        assert!(like("Ada Lovelace", "ada%"));
        assert!(!like("Ada", "b%"));
    }
}
