//! The agent's Prometheus metrics: CNI calls by verb and result, call
//! latency, calls in flight and queued, cache sizes.

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("encode metrics: {0}")]
    Encode(String),
}

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// ADD, DEL, CHECK, GC, STATUS, VERSION or `unknown`.
    pub verb: String,
    /// `ok`, `error` (the CNI call failed) or `rejected` (over the limit).
    pub result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabels {
    pub verb: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// `pods` or `network_attachment_definitions`.
    pub kind: String,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~33 s
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Every metric of the agent, registered once.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub calls: Family<CallLabels, Counter>,
    pub latency: Family<VerbLabels, Histogram, fn() -> Histogram>,
    pub in_flight: Gauge<i64, AtomicI64>,
    pub queued: Gauge<i64, AtomicI64>,
    pub cache_objects: Family<CacheLabels, Gauge<i64, AtomicI64>>,
    pub cache_misses: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("virtlink_agent");
        let calls = Family::<CallLabels, Counter>::default();
        let latency = Family::<VerbLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let in_flight = Gauge::<i64, AtomicI64>::default();
        let queued = Gauge::<i64, AtomicI64>::default();
        let cache_objects = Family::<CacheLabels, Gauge<i64, AtomicI64>>::default();
        let cache_misses = Counter::default();
        registry.register("cni_calls", "CNI calls by verb and result", calls.clone());
        registry.register(
            "cni_call_duration_seconds",
            "Time to serve a CNI call, queueing included",
            latency.clone(),
        );
        registry.register(
            "cni_calls_in_flight",
            "CNI calls running",
            in_flight.clone(),
        );
        registry.register(
            "cni_calls_queued",
            "CNI calls waiting for a worker",
            queued.clone(),
        );
        registry.register(
            "cache_objects",
            "Objects in the watch-based cache",
            cache_objects.clone(),
        );
        registry.register(
            "cache_misses",
            "Lookups the cache could not answer (served by a GET)",
            cache_misses.clone(),
        );
        Self {
            registry,
            calls,
            latency,
            in_flight,
            queued,
            cache_objects,
            cache_misses,
        }
    }

    pub fn call(&self, verb: &str, result: &str) {
        self.calls
            .get_or_create(&CallLabels {
                verb: verb.to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    pub fn observe(&self, verb: &str, seconds: f64) {
        self.latency
            .get_or_create(&VerbLabels {
                verb: verb.to_string(),
            })
            .observe(seconds);
    }

    pub fn set_cache(&self, kind: &str, n: usize) {
        self.cache_objects
            .get_or_create(&CacheLabels {
                kind: kind.to_string(),
            })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .map_err(|e| Error::Encode(e.to_string()))?;
        Ok(out)
    }
}
