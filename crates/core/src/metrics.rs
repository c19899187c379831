//! A small in-process metrics registry rendered in the Prometheus text format.
//! Metric names and help texts are declared once, in `METRICS`, so every name the
//! hub exports can be found in one place.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

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
];

/// Upper bounds (seconds) of histogram buckets.
const BUCKETS: [f64; 15] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

type Labels = Vec<(&'static str, String)>;

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct Series {
    values: BTreeMap<(&'static str, Labels), f64>,
    histograms: BTreeMap<(&'static str, Labels), Histogram>,
}

#[derive(Default)]
pub struct Registry {
    series: Mutex<Series>,
}

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_string())).collect()
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Series> {
        self.series.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn inc(&self, name: &'static str, pairs: &[(&'static str, &str)], by: f64) {
        *self.lock().values.entry((name, labels(pairs))).or_default() += by;
    }

    pub fn set(&self, name: &'static str, pairs: &[(&'static str, &str)], value: f64) {
        self.lock().values.insert((name, labels(pairs)), value);
    }

    pub fn observe(&self, name: &'static str, pairs: &[(&'static str, &str)], seconds: f64) {
        let mut s = self.lock();
        let h = s.histograms.entry((name, labels(pairs))).or_default();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                h.counts[i] += 1;
            }
        }
        h.sum += seconds;
        h.count += 1;
    }

    /// Current value of a counter or gauge (0 when never set); for tests and status.
    pub fn value(&self, name: &'static str, pairs: &[(&'static str, &str)]) -> f64 {
        self.lock().values.get(&(name, labels(pairs))).copied().unwrap_or(0.0)
    }

    pub fn render(&self) -> String {
        let s = self.lock();
        let mut out = String::new();
        for (name, kind, help) in METRICS {
            let kind_text = match kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind_text}");
            for ((n, l), v) in s.values.range((*name, Vec::new())..) {
                if n != name {
                    break;
                }
                let _ = writeln!(out, "{name}{} {v}", fmt_labels(l, None));
            }
            for ((n, l), h) in s.histograms.range((*name, Vec::new())..) {
                if n != name {
                    break;
                }
                for (i, bound) in BUCKETS.iter().enumerate() {
                    let _ = writeln!(out, "{name}_bucket{} {}", fmt_labels(l, Some(&bound.to_string())), h.counts[i]);
                }
                let _ = writeln!(out, "{name}_bucket{} {}", fmt_labels(l, Some("+Inf")), h.count);
                let _ = writeln!(out, "{name}_sum{} {}", fmt_labels(l, None), h.sum);
                let _ = writeln!(out, "{name}_count{} {}", fmt_labels(l, None), h.count);
            }
        }
        out
    }
}

fn fmt_labels(l: &Labels, le: Option<&str>) -> String {
    let mut parts: Vec<String> =
        l.iter().map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))).collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let r = Registry::new();
        r.inc("syncflow_http_requests_total", &[("method", "GET"), ("status", "200")], 1.0);
        r.inc("syncflow_http_requests_total", &[("method", "GET"), ("status", "200")], 1.0);
        r.observe("syncflow_http_request_duration_seconds", &[("route", "/x")], 0.003);
        let text = r.render();
        assert!(text.contains("syncflow_http_requests_total{method=\"GET\",status=\"200\"} 2\n"), "{text}");
        assert!(text.contains("syncflow_http_request_duration_seconds_bucket{route=\"/x\",le=\"0.0025\"} 0\n"));
        assert!(text.contains("syncflow_http_request_duration_seconds_bucket{route=\"/x\",le=\"0.005\"} 1\n"));
        assert!(text.contains("syncflow_http_request_duration_seconds_count{route=\"/x\"} 1\n"));
    }
}
