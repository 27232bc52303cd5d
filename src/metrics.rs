//! Prometheus metrics: counters and latency histograms kept as the daemon
//! works (FUSE operations, API requests, backend requests, pushes,
//! fetches, conflicts, evictions), and the queue and cache read from the
//! core at each scrape. Served as `GET /metrics` in the text exposition
//! format (OpenMetrics 1.0, which Prometheus reads) by the API listener
//! and by the `[metrics]` listener (`crate::api::metrics_server`).
//!
//! One set per process (`metrics()`): the FUSE layer, the API and the
//! sidecar count into it without being handed anything. Recording costs a
//! hash lookup of a short label set and a few atomic adds.

use std::sync::LazyLock;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::core::Locker;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    pub route: &'static str,
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NsLabels {
    pub namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NsOpLabels {
    pub namespace: String,
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NsErrorLabels {
    pub namespace: String,
    pub op: &'static str,
    /// `transient`, `permanent` or `not_found`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NsResultLabels {
    pub namespace: String,
    /// `done`, `later` (a file still being written) or `failed`.
    pub result: &'static str,
}

type Hist<L> = Family<L, Histogram, fn() -> Histogram>;

fn fuse_hist() -> Histogram {
    // 10 µs to about 10 s.
    Histogram::new(exponential_buckets(1e-5, 4.0, 11))
}

fn slow_hist() -> Histogram {
    // 100 µs to about 100 s.
    Histogram::new(exponential_buckets(1e-4, 4.0, 11))
}

/// Every metric LOCKER keeps.
pub struct Metrics {
    registry: Registry,
    pub fuse_ops: Family<OpLabels, Counter>,
    pub fuse_errors: Family<OpLabels, Counter>,
    pub fuse_seconds: Hist<OpLabels>,
    pub api_requests: Family<ApiLabels, Counter>,
    pub api_seconds: Hist<RouteLabels>,
    pub backend_requests: Family<NsOpLabels, Counter>,
    pub backend_errors: Family<NsErrorLabels, Counter>,
    pub backend_seconds: Hist<NsOpLabels>,
    pub backend_sent: Family<NsLabels, Counter>,
    pub backend_received: Family<NsLabels, Counter>,
    pub pushes: Family<NsResultLabels, Counter>,
    pub fetches: Family<NsLabels, Counter>,
    pub fetch_bytes: Family<NsLabels, Counter>,
    pub conflicts: Family<NsLabels, Counter>,
    pub evictions: Counter,
    pub evicted_bytes: Counter,
    queue_entries: Family<NsLabels, Gauge>,
    queue_bytes: Family<NsLabels, Gauge>,
    queue_oldest: Family<NsLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    cache_used: Gauge,
    cache_limit: Gauge,
    cache_dirty: Gauge,
}

impl Metrics {
    fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("locker"),
            fuse_ops: Family::default(),
            fuse_errors: Family::default(),
            fuse_seconds: Family::new_with_constructor(fuse_hist),
            api_requests: Family::default(),
            api_seconds: Family::new_with_constructor(slow_hist),
            backend_requests: Family::default(),
            backend_errors: Family::default(),
            backend_seconds: Family::new_with_constructor(slow_hist),
            backend_sent: Family::default(),
            backend_received: Family::default(),
            pushes: Family::default(),
            fetches: Family::default(),
            fetch_bytes: Family::default(),
            conflicts: Family::default(),
            evictions: Counter::default(),
            evicted_bytes: Counter::default(),
            queue_entries: Family::default(),
            queue_bytes: Family::default(),
            queue_oldest: Family::default(),
            cache_used: Gauge::default(),
            cache_limit: Gauge::default(),
            cache_dirty: Gauge::default(),
        };
        let r = &mut m.registry;
        r.register(
            "fuse_operations",
            "FUSE requests answered, by operation",
            m.fuse_ops.clone(),
        );
        r.register(
            "fuse_errors",
            "FUSE requests answered with an error, by operation",
            m.fuse_errors.clone(),
        );
        r.register_with_unit(
            "fuse_operation_duration",
            "Time from a FUSE request's arrival to its reply, by operation",
            Unit::Seconds,
            m.fuse_seconds.clone(),
        );
        r.register(
            "api_requests",
            "HTTP API requests, by route, method and status",
            m.api_requests.clone(),
        );
        r.register_with_unit(
            "api_request_duration",
            "Time from an HTTP request's arrival to its response head, by route",
            Unit::Seconds,
            m.api_seconds.clone(),
        );
        r.register(
            "backend_requests",
            "Requests to a namespace's backend, by operation",
            m.backend_requests.clone(),
        );
        r.register(
            "backend_errors",
            "Backend requests that failed, by operation and kind",
            m.backend_errors.clone(),
        );
        r.register_with_unit(
            "backend_request_duration",
            "Time a backend request took, by operation",
            Unit::Seconds,
            m.backend_seconds.clone(),
        );
        r.register_with_unit(
            "backend_sent",
            "File bytes sent to a namespace's backend",
            Unit::Bytes,
            m.backend_sent.clone(),
        );
        r.register_with_unit(
            "backend_received",
            "File bytes received from a namespace's backend",
            Unit::Bytes,
            m.backend_received.clone(),
        );
        r.register(
            "pushes",
            "Queued changes the sidecar handled, by result",
            m.pushes.clone(),
        );
        r.register(
            "fetches",
            "Reads that fetched file data from a backend",
            m.fetches.clone(),
        );
        r.register_with_unit(
            "fetched",
            "File bytes fetched from a backend for reads",
            Unit::Bytes,
            m.fetch_bytes.clone(),
        );
        r.register(
            "conflicts",
            "Concurrent changes found (a conflict copy was kept)",
            m.conflicts.clone(),
        );
        r.register(
            "cache_evictions",
            "Blocks dropped from the cache (a backend holds them)",
            m.evictions.clone(),
        );
        r.register_with_unit(
            "cache_evicted",
            "Bytes dropped from the cache",
            Unit::Bytes,
            m.evicted_bytes.clone(),
        );
        r.register(
            "queue_entries",
            "Changes not yet in the backend",
            m.queue_entries.clone(),
        );
        r.register_with_unit(
            "queue",
            "Bytes of the changes not yet in the backend",
            Unit::Bytes,
            m.queue_bytes.clone(),
        );
        r.register_with_unit(
            "queue_oldest_age",
            "Age of the oldest change not yet in the backend (0: none)",
            Unit::Seconds,
            m.queue_oldest.clone(),
        );
        r.register_with_unit(
            "cache_used",
            "Bytes of blocks in the local cache",
            Unit::Bytes,
            m.cache_used.clone(),
        );
        r.register_with_unit(
            "cache_limit",
            "The cache bound",
            Unit::Bytes,
            m.cache_limit.clone(),
        );
        r.register_with_unit(
            "cache_dirty",
            "Bytes in the cache that no backend holds yet",
            Unit::Bytes,
            m.cache_dirty.clone(),
        );
        m
    }

    /// The text a scrape gets: the queue and cache read from `core` now,
    /// and every counter.
    pub fn render(&self, core: Option<&Locker>) -> String {
        if let Some(core) = core {
            // Every namespace has its gauges, zero while nothing waits.
            for ns in core.namespaces().unwrap_or_default() {
                let l = NsLabels { namespace: ns };
                self.queue_entries.get_or_create(&l).set(0);
                self.queue_bytes.get_or_create(&l).set(0);
                self.queue_oldest.get_or_create(&l).set(0.0);
            }
            if let Ok(stats) = core.sync_stats() {
                let now = crate::meta::sync::now_ns();
                for s in stats {
                    let l = NsLabels { namespace: s.ns };
                    self.queue_entries.get_or_create(&l).set(s.entries as i64);
                    self.queue_bytes.get_or_create(&l).set(s.bytes as i64);
                    let age = s.oldest_ns.map_or(0.0, |t| (now - t).max(0) as f64 / 1e9);
                    self.queue_oldest.get_or_create(&l).set(age);
                }
            }
            if let Ok((used, limit, dirty)) = core.cache_info() {
                self.cache_used.set(used as i64);
                self.cache_limit.set(limit as i64);
                self.cache_dirty.set(dirty as i64);
            }
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The content type of `render`'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// Times one FUSE operation from its creation to its drop (the reply),
/// and counts it; `failed` counts it as an error too.
pub struct FuseTimer {
    op: &'static str,
    start: Instant,
}

impl FuseTimer {
    pub fn start(op: &'static str) -> FuseTimer {
        FuseTimer {
            op,
            start: Instant::now(),
        }
    }
}

impl Drop for FuseTimer {
    fn drop(&mut self) {
        let m = metrics();
        let l = OpLabels { op: self.op };
        m.fuse_ops.get_or_create(&l).inc();
        m.fuse_seconds
            .get_or_create(&l)
            .observe(self.start.elapsed().as_secs_f64());
    }
}

/// Counts a FUSE operation answered with an error.
pub fn fuse_error(op: &'static str) {
    metrics().fuse_errors.get_or_create(&OpLabels { op }).inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_show_in_the_text_with_their_labels() {
        let m = Metrics::new();
        m.fuse_ops.get_or_create(&OpLabels { op: "lookup" }).inc();
        m.backend_sent
            .get_or_create(&NsLabels {
                namespace: "corp".into(),
            })
            .inc_by(4096);
        m.fuse_seconds
            .get_or_create(&OpLabels { op: "lookup" })
            .observe(0.00002);
        let text = m.render(None);
        assert!(
            text.contains("locker_fuse_operations_total{op=\"lookup\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("locker_backend_sent_bytes_total{namespace=\"corp\"} 4096"),
            "{text}"
        );
        assert!(
            text.contains(
                "locker_fuse_operation_duration_seconds_bucket{le=\"0.00004\",op=\"lookup\"} 1"
            ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
