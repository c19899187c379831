//! Client clocks and conflict policy: parsing the timestamps clients send, and the
//! one total order that last-writer-wins resolves by.
//!
//! Invariant kept here: the order of two writes depends only on the writes
//! themselves (edit time, then writer), never on the order they reach the hub, so
//! every client that syncs converges on the same value.

use std::cmp::Ordering;

use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, Timelike, Utc};
use serde::{Deserialize, Serialize};

/// Parses an instant as clients send it: RFC 3339 with any offset, or naive
/// `YYYY-MM-DD[T ]HH:MM[:SS[.f]]` or `YYYY-MM-DD`, read as UTC (the `001` seed's
/// clients send naive times and its server read them as UTC). Years before 1 or
/// after 9999 are refused so the canonical text form stays fixed-width and sortable.
pub fn parse_datetime(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    let parsed = DateTime::parse_from_rfc3339(s).map(|d| d.with_timezone(&Utc)).ok().or_else(|| {
        ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M"]
            .iter()
            .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
            .or_else(|| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok().and_then(|d| d.and_hms_opt(0, 0, 0)))
            .map(|n| n.and_utc())
    })?;
    let year = chrono::Datelike::year(&parsed);
    (1..=9999).contains(&year).then_some(parsed)
}

/// The hub's canonical timestamp text (as `now_timestamp`): UTC, microseconds, `Z`.
/// Fixed width, so text order is time order on both backends.
pub fn canonical(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// How date-time *fields* are shown: UTC with `Z`, fractional seconds only when
/// there are any (`2022-05-01T01:11:00Z`) — the shape the seed's clients read back.
pub fn display_datetime(at: DateTime<Utc>) -> String {
    let at = at.with_nanosecond(at.nanosecond() / 1000 * 1000).unwrap_or(at);
    if at.nanosecond() == 0 {
        at.format("%Y-%m-%dT%H:%M:%SZ").to_string()
    } else {
        at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
    }
}

/// Re-renders a canonical timestamp for display (see `display_datetime`).
pub fn display_canonical(canonical_text: &str) -> String {
    parse_datetime(canonical_text).map_or_else(|| canonical_text.to_string(), display_datetime)
}

/// What happens when a client writes a record that changed since the client last
/// saw it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictPolicy {
    /// The write with the later `updated_at` wins (ties: the greater writer name);
    /// a write whose `base_version` is the current version always applies.
    #[default]
    LastWriterWins,
    /// A write applies only if its `base_version` is the record's current version
    /// (absent means "I expect no such record yet"); otherwise it is refused.
    RejectStale,
}

impl ConflictPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictPolicy::LastWriterWins => "last_writer_wins",
            ConflictPolicy::RejectStale => "reject_stale",
        }
    }

    pub fn parse(s: &str) -> Option<ConflictPolicy> {
        match s {
            "last_writer_wins" => Some(ConflictPolicy::LastWriterWins),
            "reject_stale" => Some(ConflictPolicy::RejectStale),
            _ => None,
        }
    }
}

/// The sync clock of a record version: when it was edited (the client's
/// `updated_at`, or the hub's commit time for writes that carry none) and by whom
/// (`client:<id>`, or `hub`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clock {
    /// Canonical timestamp text (see `canonical`).
    pub edited_at: String,
    pub writer: String,
}

/// Writer name used for versions no client wrote (API, SQL, external systems).
pub const HUB_WRITER: &str = "hub";

impl Clock {
    pub fn new(edited_at: impl Into<String>, writer: impl Into<String>) -> Self {
        Self { edited_at: edited_at.into(), writer: writer.into() }
    }

    /// Last-writer-wins order: edit time first, then writer name, so equal times
    /// still have one winner whatever the arrival order.
    pub fn order(&self, other: &Clock) -> Ordering {
        self.edited_at.cmp(&other.edited_at).then_with(|| self.writer.cmp(&other.writer))
    }

    /// Whether an incoming write with this clock replaces `current`. Equal clocks
    /// (the same writer re-sending the same edit) apply again, which is harmless:
    /// a write that changes nothing records nothing.
    pub fn beats(&self, current: &Clock) -> bool {
        self.order(current) != Ordering::Less
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_shapes_clients_send() {
        let want = "2021-11-12T01:11:00.000000Z";
        for s in [
            "2021-11-12T01:11:00",
            "2021-11-12T01:11:00Z",
            "2021-11-12T02:11:00+01:00",
            "2021-11-12 01:11:00",
            "2021-11-12T01:11",
        ] {
            assert_eq!(canonical(parse_datetime(s).unwrap()), want, "{s}");
        }
        assert_eq!(canonical(parse_datetime("2021-11-12T01:11:00.5").unwrap()), "2021-11-12T01:11:00.500000Z");
        assert_eq!(canonical(parse_datetime("2022-05-01").unwrap()), "2022-05-01T00:00:00.000000Z");
        for bad in ["", "yesterday", "2021-13-01T00:00:00", "12/11/2021"] {
            assert!(parse_datetime(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn display_drops_empty_fractions() {
        let at = parse_datetime("2022-05-01T01:11:00").unwrap();
        assert_eq!(display_datetime(at), "2022-05-01T01:11:00Z");
        let at = parse_datetime("2022-05-01T01:11:00.25Z").unwrap();
        assert_eq!(display_datetime(at), "2022-05-01T01:11:00.250000Z");
        assert_eq!(display_canonical("2022-05-01T01:11:00.000000Z"), "2022-05-01T01:11:00Z");
    }

    #[test]
    fn ties_break_by_writer_whatever_the_arrival_order() {
        let a = Clock::new("2024-01-01T00:00:00.000000Z", "client:a");
        let b = Clock::new("2024-01-01T00:00:00.000000Z", "client:b");
        assert!(b.beats(&a) && !a.beats(&b));
        let later = Clock::new("2024-01-01T00:00:00.000001Z", "client:a");
        assert!(later.beats(&b));
        assert!(a.beats(&a.clone()), "a writer's own resend applies");
    }
}
