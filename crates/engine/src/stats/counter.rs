//! Single-writer counters and histograms: the cells each core writes and a scrape sums.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A counter written by one core only.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Single writer, so a load and a store suffice (no locked instruction).
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }
    /// Subtracts one (for gauges kept as counters of opens minus closes).
    #[inline]
    pub fn dec(&self) {
        self.0.store(self.0.load(Relaxed).wrapping_sub(1), Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Upper bounds of the ClientHello size histogram, in bytes.
pub const HELLO_SIZE_BUCKETS: [f64; 9] = [
    256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0, 65536.0,
];
/// Upper bounds of the connection duration histogram, in seconds.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 300.0, 1800.0, 3600.0,
];

/// A histogram written by one core only. The sum is kept in micro-units to stay an integer.
#[derive(Debug)]
pub struct Histogram {
    pub(crate) bounds: &'static [f64],
    pub(crate) buckets: Box<[Counter]>,
    pub(crate) count: Counter,
    pub(crate) sum_micros: Counter,
}

impl Histogram {
    /// An empty histogram with these upper bounds.
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: (0..bounds.len()).map(|_| Counter::default()).collect(),
            count: Counter::default(),
            sum_micros: Counter::default(),
        }
    }

    /// Records one observation.
    pub fn observe(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            self.buckets[i].inc();
        }
        self.count.inc();
        self.sum_micros.add((v * 1e6) as u64);
    }
}
