//! The hub's metrics, kept in a `prometheus-client` registry and rendered in the
//! OpenMetrics text format. Metric names and help texts are declared once, in
//! `METRICS`, so every name the hub exports can be found in one place.
//!
//! Invariant kept here: each `Registry` is independent (one per hub, so tests that
//! start several hubs in one process never see each other's counts), and call
//! sites name a metric by its exported name (`syncflow_…_total` for counters).

use std::collections::HashMap;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric the hub exports: name, kind, help.
pub const METRICS: &[(&str, Kind, &str)] = &[
    ("syncflow_http_requests_total", Kind::Counter, "HTTP requests served, by method, route and status."),
    ("syncflow_http_request_duration_seconds", Kind::Histogram, "HTTP request latency, by route."),
    ("syncflow_changes_written_total", Kind::Counter, "Changes committed by this process, by entity and origin."),
    ("syncflow_change_log_head", Kind::Gauge, "Highest change sequence number in the change log."),
    ("syncflow_dispatch_lag", Kind::Gauge, "Changes committed but not yet turned into deliveries."),
    ("syncflow_deliveries_total", Kind::Counter, "Delivery outcomes recorded by this process, by system and outcome."),
    ("syncflow_delivery_retries_total", Kind::Counter, "Retriable failures scheduled for another attempt, by system."),
    ("syncflow_delivery_throttled_total", Kind::Counter, "HTTP 429 answers received, by system."),
    ("syncflow_delivery_latency_seconds", Kind::Histogram, "Change commit to confirmed delivery, by system."),
    ("syncflow_queue_depth", Kind::Gauge, "Unfinished deliveries (pending, retrying, in flight), by system."),
    ("syncflow_queue_dead", Kind::Gauge, "Dead deliveries awaiting replay, by system."),
    ("syncflow_inbox_events_total", Kind::Counter, "Inward events received, by system, source and outcome."),
    (
        "syncflow_retention_pruned_total",
        Kind::Counter,
        "Rows removed by retention, by table (inbox_payload: raw payloads emptied).",
    ),
    ("syncflow_queue_oldest_age_seconds", Kind::Gauge, "Age of the oldest unfinished delivery, by system."),
    (
        "syncflow_sync_items_total",
        Kind::Counter,
        "Client sync items applied, by entity and outcome (created, updated, deleted, unchanged, conflict).",
    ),
    (
        "syncflow_sync_conflicts_total",
        Kind::Counter,
        "Client sync conflicts, by entity, policy and winner (client or hub).",
    ),
    ("syncflow_stream_clients", Kind::Gauge, "Open server-sent-event change streams."),
    (
        "syncflow_api_usage",
        Kind::Gauge,
        "API calls used in the system's current window, as it last reported, by system.",
    ),
    ("syncflow_api_limit", Kind::Gauge, "API calls the system allows in its window, by system."),
    ("syncflow_api_budget", Kind::Gauge, "The part of the system's API allowance this hub may use, by system."),
    (
        "syncflow_store_group_commits_total",
        Kind::Counter,
        "SQLite: transactions committed by the group-commit writer (writes per commit = writes / commits).",
    ),
    ("syncflow_store_group_writes_total", Kind::Counter, "SQLite: writes carried by group commits."),
];

/// The `Content-Type` of `Registry::render`'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds (seconds) of histogram buckets.
const BUCKETS: [f64; 15] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Label pairs in the order the call site gave them.
type Labels = Vec<(&'static str, String)>;

fn new_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

enum Metric {
    Counter(Family<Labels, Counter<f64>>),
    Gauge(Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>),
    Histogram(Family<Labels, Histogram, fn() -> Histogram>),
}

/// One hub's metrics.
pub struct Registry {
    registry: prometheus_client::registry::Registry,
    by_name: HashMap<&'static str, Metric>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_string())).collect()
}

impl Registry {
    pub fn new() -> Self {
        let mut registry = prometheus_client::registry::Registry::default();
        let mut by_name = HashMap::new();
        for &(name, kind, help) in METRICS {
            // The library adds the final full stop to help texts, and `_total` to
            // counter names.
            let help = help.trim_end_matches('.');
            let metric = match kind {
                Kind::Counter => {
                    let family = Family::default();
                    registry.register(name.trim_end_matches("_total"), help, family.clone());
                    Metric::Counter(family)
                }
                Kind::Gauge => {
                    let family = Family::default();
                    registry.register(name, help, family.clone());
                    Metric::Gauge(family)
                }
                Kind::Histogram => {
                    let family = Family::new_with_constructor(new_histogram as fn() -> Histogram);
                    registry.register(name, help, family.clone());
                    Metric::Histogram(family)
                }
            };
            by_name.insert(name, metric);
        }
        Self { registry, by_name }
    }

    /// Adds `by` to a counter, or to a gauge (negative to lower it). Names not in
    /// `METRICS` are ignored.
    pub fn inc(&self, name: &'static str, pairs: &[(&'static str, &str)], by: f64) {
        match self.by_name.get(name) {
            Some(Metric::Counter(f)) => {
                f.get_or_create(&labels(pairs)).inc_by(by);
            }
            Some(Metric::Gauge(f)) => {
                f.get_or_create(&labels(pairs)).inc_by(by);
            }
            _ => debug_assert!(self.by_name.contains_key(name), "unknown metric {name}"),
        }
    }

    /// Sets a gauge.
    pub fn set(&self, name: &'static str, pairs: &[(&'static str, &str)], value: f64) {
        if let Some(Metric::Gauge(f)) = self.by_name.get(name) {
            f.get_or_create(&labels(pairs)).set(value);
        }
    }

    /// Records one observation in a histogram.
    pub fn observe(&self, name: &'static str, pairs: &[(&'static str, &str)], seconds: f64) {
        if let Some(Metric::Histogram(f)) = self.by_name.get(name) {
            f.get_or_create(&labels(pairs)).observe(seconds);
        }
    }

    /// Current value of a counter or gauge (0 when never set); for tests and status.
    pub fn value(&self, name: &'static str, pairs: &[(&'static str, &str)]) -> f64 {
        match self.by_name.get(name) {
            Some(Metric::Counter(f)) => f.get(&labels(pairs)).map_or(0.0, |c| c.get()),
            Some(Metric::Gauge(f)) => f.get(&labels(pairs)).map_or(0.0, |g| g.get()),
            _ => 0.0,
        }
    }

    /// Every metric in the OpenMetrics text format (see `CONTENT_TYPE`).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_histograms() {
        let r = Registry::new();
        r.inc("syncflow_http_requests_total", &[("method", "GET"), ("status", "200")], 1.0);
        r.inc("syncflow_http_requests_total", &[("method", "GET"), ("status", "200")], 1.0);
        r.observe("syncflow_http_request_duration_seconds", &[("route", "/x")], 0.003);
        r.inc("syncflow_stream_clients", &[], 1.0);
        r.inc("syncflow_stream_clients", &[], 1.0);
        r.inc("syncflow_stream_clients", &[], -1.0);
        let text = r.render();
        assert!(text.contains("# TYPE syncflow_http_requests counter\n"), "{text}");
        assert!(text.contains("syncflow_http_requests_total{method=\"GET\",status=\"200\"} 2"), "{text}");
        assert!(
            text.contains("syncflow_http_request_duration_seconds_bucket{le=\"0.0025\",route=\"/x\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("syncflow_http_request_duration_seconds_bucket{le=\"0.005\",route=\"/x\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("syncflow_http_request_duration_seconds_count{route=\"/x\"} 1\n"), "{text}");
        assert!(text.contains("syncflow_stream_clients 1"), "{text}");
        assert!(text.contains("# HELP syncflow_stream_clients Open server-sent-event change streams.\n"), "{text}");
        assert!(!text.contains("syncflow_dispatch_lag"), "metrics never touched are left out: {text}");
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(r.value("syncflow_http_requests_total", &[("method", "GET"), ("status", "200")]), 2.0);
    }

    #[test]
    fn registries_are_independent() {
        let (a, b) = (Registry::new(), Registry::new());
        a.inc("syncflow_deliveries_total", &[("system", "crm"), ("outcome", "delivered")], 3.0);
        assert_eq!(b.value("syncflow_deliveries_total", &[("system", "crm"), ("outcome", "delivered")]), 0.0);
        assert!(!b.render().contains("syncflow_deliveries_total{"));
    }
}
