//! Latency recording for benchmarks: an HDR histogram in microseconds.

use hdrhistogram::Histogram;

pub struct Latencies {
    hist: Histogram<u64>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub count: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

impl Latencies {
    pub fn new() -> Self {
        Self { hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds") }
    }

    pub fn record(&mut self, elapsed: std::time::Duration) {
        let us = (elapsed.as_nanos() as u64 / 1000).max(1);
        self.hist.saturating_record(us);
    }

    pub fn merge(&mut self, other: &Latencies) {
        self.hist.add(&other.hist).expect("same histogram bounds");
    }

    pub fn summary(&self) -> Summary {
        if self.hist.is_empty() {
            return Summary::default();
        }
        Summary {
            count: self.hist.len(),
            p50_us: self.hist.value_at_quantile(0.5) as f64,
            p99_us: self.hist.value_at_quantile(0.99) as f64,
            p999_us: self.hist.value_at_quantile(0.999) as f64,
            max_us: self.hist.max() as f64,
            mean_us: self.hist.mean(),
        }
    }
}

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}
