//! Counters, gauges and histograms the scheduler updates and `/metrics` renders.
//! Lock-free (atomics); histograms keep cumulative bucket counts in microseconds.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

pub struct Histogram {
    /// Upper bounds in seconds (the +Inf bucket is implicit).
    pub bounds: Vec<f64>,
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &[f64]) -> Self {
        Histogram {
            bounds: bounds.to_vec(),
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }
    pub fn observe(&self, seconds: f64) {
        for (b, c) in self.bounds.iter().zip(&self.buckets) {
            if seconds <= *b {
                c.fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add((seconds * 1e6).max(0.0) as u64, Relaxed);
    }
    /// Cumulative counts per bound, total count, sum in seconds.
    pub fn snapshot(&self) -> (Vec<(f64, u64)>, u64, f64) {
        (
            self.bounds.iter().zip(&self.buckets).map(|(b, c)| (*b, c.load(Relaxed))).collect(),
            self.count.load(Relaxed),
            self.sum_us.load(Relaxed) as f64 / 1e6,
        )
    }
}

const LATENCY_BOUNDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0,
    2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0,
];

/// Decode step times: 1 ms to 160 ms.
const STEP_BOUNDS: &[f64] = &[0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03, 0.05, 0.08, 0.16];

pub struct Stats {
    // Gauges.
    /// Requests submitted and not yet finished (queued, running, or in the channel).
    pub active: AtomicUsize,
    pub queued: AtomicUsize,
    pub running: AtomicUsize,
    pub slots_used: AtomicUsize,
    pub slots_total: AtomicUsize,
    /// KV blocks held by requests (shared ones counted once; not those only the prefix
    /// cache holds).
    pub blocks_used: AtomicUsize,
    pub blocks_total: AtomicUsize,
    /// KV blocks only the prefix cache holds (free for the taking by eviction).
    pub blocks_cached: AtomicUsize,
    /// State snapshots the prefix cache holds.
    pub snapshots_cached: AtomicUsize,
    /// Tokens of the requests waiting to start.
    pub waiting_tokens: AtomicUsize,
    /// Tokens per second over the last decode-bearing steps (f64 bits).
    pub gen_throughput_bits: AtomicU64,
    // Counters.
    pub requests_submitted: AtomicU64,
    pub requests_finished: AtomicU64,
    pub requests_aborted: AtomicU64,
    pub requests_rejected: AtomicU64,
    pub prompt_tokens: AtomicU64,
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: AtomicU64,
    pub generation_tokens: AtomicU64,
    pub steps: AtomicU64,
    pub retractions: AtomicU64,
    pub backend_errors: AtomicU64,
    /// Speculative verify passes (one per sequence per cycle) and the tokens they produced.
    pub spec_verify_ct: AtomicU64,
    pub spec_verify_tokens: AtomicU64,
    // Histograms.
    pub ttft: Histogram,
    pub itl: Histogram,
    pub e2e: Histogram,
    pub queue_time: Histogram,
    /// Steps of decode rows only (no prefill chunk, no speculation): the backend's
    /// `forward`, and the whole step with the host's work on its tokens. Their means
    /// against the client's TPOT tell where serving time goes beside the GPU step.
    pub decode_forward: Histogram,
    pub decode_step: Histogram,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            active: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            slots_used: AtomicUsize::new(0),
            slots_total: AtomicUsize::new(0),
            blocks_used: AtomicUsize::new(0),
            blocks_total: AtomicUsize::new(0),
            blocks_cached: AtomicUsize::new(0),
            snapshots_cached: AtomicUsize::new(0),
            waiting_tokens: AtomicUsize::new(0),
            gen_throughput_bits: AtomicU64::new(0),
            requests_submitted: AtomicU64::new(0),
            requests_finished: AtomicU64::new(0),
            requests_aborted: AtomicU64::new(0),
            requests_rejected: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            cached_tokens: AtomicU64::new(0),
            generation_tokens: AtomicU64::new(0),
            steps: AtomicU64::new(0),
            retractions: AtomicU64::new(0),
            backend_errors: AtomicU64::new(0),
            spec_verify_ct: AtomicU64::new(0),
            spec_verify_tokens: AtomicU64::new(0),
            ttft: Histogram::new(LATENCY_BOUNDS),
            itl: Histogram::new(LATENCY_BOUNDS),
            e2e: Histogram::new(LATENCY_BOUNDS),
            queue_time: Histogram::new(LATENCY_BOUNDS),
            decode_forward: Histogram::new(STEP_BOUNDS),
            decode_step: Histogram::new(STEP_BOUNDS),
        }
    }
}

impl Stats {
    pub fn gen_throughput(&self) -> f64 {
        f64::from_bits(self.gen_throughput_bits.load(Relaxed))
    }
    /// Tokens per speculative verify pass (bonus included), once speculation has run.
    pub fn avg_spec_accept_length(&self) -> Option<f64> {
        let ct = self.spec_verify_ct.load(Relaxed);
        (ct > 0).then(|| self.spec_verify_tokens.load(Relaxed) as f64 / ct as f64)
    }
    /// True when nothing is queued or running and no slot or block is held.
    pub fn is_idle(&self) -> bool {
        self.active.load(Relaxed) == 0
            && self.queued.load(Relaxed) == 0
            && self.running.load(Relaxed) == 0
            && self.slots_used.load(Relaxed) == 0
            && self.blocks_used.load(Relaxed) == 0
    }
}
