//! Speculative decoding (MTP) policy: the settings from SGLang's `--speculative-*` flags,
//! the per-step decision from a cost model, and the per-request counters SGLang reports.
//! Pure logic; the engine applies it in `spec_step.rs`.

use std::collections::BTreeMap;

/// Most chained draft steps accepted on the command line.
pub const MAX_DRAFT_STEPS: usize = 16;

/// When the scheduler speculates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SpecPolicy {
    /// Per step, when the cost model says a cycle beats plain decoding (and a probe step
    /// now and then while it does not, to keep the acceptance estimate fresh).
    #[default]
    Auto,
    /// Every step that has eligible sequences (tests, oracle measurements).
    Always,
}

/// Speculative decoding settings.
#[derive(Clone, Debug, PartialEq)]
pub struct SpecConfig {
    /// Chained MTP draft steps per cycle (k); a cycle verifies k + 1 tokens.
    pub num_steps: usize,
    pub policy: SpecPolicy,
    /// Drafts are argmaxes over the first this many token ids only (kiln's
    /// `--speculative-draft-vocab`; None: the whole vocabulary). The ids of a BPE vocabulary
    /// come roughly in frequency order, so a prefix keeps most drafts while the draft's
    /// lm_head reads a fraction of the table; verification keeps the output exact.
    pub draft_vocab: Option<usize>,
}

/// Resolves SGLang's flags: `--speculative-algorithm` (NEXTN; EAGLE, which SGLang runs the
/// same way for Qwen3.5 MTP; none), `--speculative-num-steps` (default 3),
/// `--speculative-eagle-topk` (only 1: kiln drafts one chain) and
/// `--speculative-num-draft-tokens` (only steps + 1). `Ok(None)`: no speculation.
pub fn resolve(
    algorithm: Option<&str>,
    num_steps: Option<usize>,
    eagle_topk: Option<usize>,
    num_draft_tokens: Option<usize>,
    policy: SpecPolicy,
) -> Result<Option<SpecConfig>, String> {
    match algorithm.map(|a| a.to_ascii_uppercase()) {
        None => return Ok(None),
        Some(a) if a == "NONE" => return Ok(None),
        Some(a) if a == "NEXTN" || a == "EAGLE" => {}
        Some(_) => {
            return Err(format!(
                "--speculative-algorithm {} is not supported: kiln speculates with the model's MTP head (NEXTN or EAGLE), or none",
                algorithm.unwrap_or_default()
            ))
        }
    }
    let steps = num_steps.unwrap_or(3);
    if !(1..=MAX_DRAFT_STEPS).contains(&steps) {
        return Err(format!("--speculative-num-steps {steps} is out of range: it must be between 1 and {MAX_DRAFT_STEPS}"));
    }
    if let Some(k) = eagle_topk.filter(|&k| k != 1) {
        return Err(format!("--speculative-eagle-topk {k} is not supported: kiln drafts one chain per sequence (use 1)"));
    }
    if let Some(n) = num_draft_tokens.filter(|&n| n != steps + 1) {
        return Err(format!(
            "--speculative-num-draft-tokens {n} is not supported: with --speculative-eagle-topk 1 it must be --speculative-num-steps + 1 = {}",
            steps + 1
        ));
    }
    Ok(Some(SpecConfig { num_steps: steps, policy, draft_vocab: None }))
}

/// Seconds for a given batch: a plain decode step, and a whole speculative cycle of the
/// configured draft steps (k drafts, the verification of k + 1 tokens per sequence and the
/// commit, which `Backend::speculate` runs as one call).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepCosts {
    pub plain: f64,
    pub cycle: f64,
}

/// Whether a speculative cycle yields tokens faster than plain decoding: plain decoding
/// gives one token per sequence per step, a cycle gives the expected acceptance length
/// (accepted drafts + the bonus token) per sequence.
pub fn speculation_pays(c: &StepCosts, expected_accept_len: f64) -> bool {
    c.cycle < c.plain * expected_accept_len
}

/// Assumed cost ratios before anything is measured (relative to a plain step at the same
/// batch): a draft step runs one layer plus the lm_head, a verify of k + 1 tokens streams
/// the weights once like a decode step but with more rows. Speculation starts on and the
/// measurements decide from then on.
const ASSUMED_DRAFT_STEP: f64 = 0.2;
const ASSUMED_VERIFY: f64 = 1.3;

/// The assumed cost of a cycle of `k` draft steps, in plain steps.
fn assumed_cycle(k: usize) -> f64 {
    ASSUMED_VERIFY + ASSUMED_DRAFT_STEP * k as f64
}

/// Measured step costs per batch-size bucket (powers of two), as moving averages.
#[derive(Clone, Debug, Default)]
pub struct CostTable {
    buckets: BTreeMap<usize, [Option<f64>; 2]>,
}

const PLAIN: usize = 0;
const CYCLE: usize = 1;

fn bucket(batch: usize) -> usize {
    batch.max(1).next_power_of_two()
}

impl CostTable {
    fn observe(&mut self, batch: usize, what: usize, secs: f64) {
        if !secs.is_finite() || secs < 0.0 {
            return;
        }
        let v = &mut self.buckets.entry(bucket(batch)).or_default()[what];
        *v = Some(v.map_or(secs, |old| 0.8 * old + 0.2 * secs));
    }

    /// A plain decode step (no speculation, one token per row).
    pub fn observe_plain(&mut self, batch: usize, secs: f64) {
        self.observe(batch, PLAIN, secs);
    }
    /// A speculative cycle whose longest draft had `steps` of the configured `k` (a
    /// sequence near its max_new_tokens drafts fewer): scaled to k by the assumed ratios.
    pub fn observe_cycle(&mut self, batch: usize, steps: usize, k: usize, secs: f64) {
        self.observe(batch, CYCLE, secs * assumed_cycle(k) / assumed_cycle(steps));
    }

    /// The nearest bucket's measurement of `what` (ties go to the smaller batch).
    fn nearest(&self, batch: usize, what: usize) -> Option<f64> {
        let b = bucket(batch) as f64;
        self.buckets
            .iter()
            .filter_map(|(k, v)| v[what].map(|x| ((*k as f64 / b).ln().abs(), *k, x)))
            .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
            .map(|(_, _, x)| x)
    }

    /// Costs at `batch` for cycles of `k` draft steps: measured where known (the nearest
    /// measured bucket), else assumed relative to the plain step (1.0 when nothing is
    /// measured at all).
    pub fn at(&self, batch: usize, k: usize) -> StepCosts {
        let p = self.nearest(batch, PLAIN).unwrap_or(1.0);
        StepCosts { plain: p, cycle: self.nearest(batch, CYCLE).unwrap_or(assumed_cycle(k) * p) }
    }
}

/// The per-step decision: speculate for a batch of `batch` decoding sequences?
pub fn should_speculate(batch: usize, costs: &CostTable, draft_steps: usize, expected_accept_len: f64) -> bool {
    batch > 0 && draft_steps > 0 && speculation_pays(&costs.at(batch, draft_steps), expected_accept_len)
}

/// A decision-maker over time: the cost table, the running acceptance estimate, and
/// occasional probe cycles while speculation is off.
#[derive(Clone, Debug)]
pub struct SpecRuntime {
    pub cfg: SpecConfig,
    pub costs: CostTable,
    /// Moving average of tokens per verified sequence (accepted drafts + 1).
    pub expected_accept_len: f64,
    steps_without: usize,
    /// Where the next step starts picking sequences when the backend's verify takes fewer
    /// than are eligible (round robin, so none waits for the others to finish).
    pub next_first: usize,
    /// Set when a draft failed: the MTP head is not trusted any more and every sequence
    /// decodes plainly from then on (the main model's state was untouched by the draft).
    pub turned_off: bool,
}

/// While the cost model says no, one step in this many speculates anyway (Auto policy).
pub const PROBE_INTERVAL: usize = 64;

impl SpecRuntime {
    pub fn new(cfg: SpecConfig) -> Self {
        // Before any measurement, assume half the drafts are accepted.
        let prior = 1.0 + 0.5 * cfg.num_steps as f64;
        SpecRuntime { cfg, costs: CostTable::default(), expected_accept_len: prior, steps_without: 0, next_first: 0, turned_off: false }
    }

    /// Decides for a step with `batch` decoding sequences.
    pub fn decide(&mut self, batch: usize) -> bool {
        if self.turned_off {
            return false;
        }
        let yes = match self.cfg.policy {
            SpecPolicy::Always => batch > 0,
            SpecPolicy::Auto => {
                should_speculate(batch, &self.costs, self.cfg.num_steps, self.expected_accept_len)
                    || (batch > 0 && self.steps_without + 1 >= PROBE_INTERVAL)
            }
        };
        self.steps_without = if yes { 0 } else { self.steps_without + 1 };
        yes
    }

    /// Records one verify call: `accepted` tokens kept per verified sequence.
    pub fn observe_acceptance(&mut self, accepted: &[usize]) {
        if accepted.is_empty() {
            return;
        }
        let mean = accepted.iter().sum::<usize>() as f64 / accepted.len() as f64;
        self.expected_accept_len = 0.9 * self.expected_accept_len + 0.1 * mean;
    }
}

/// A request's speculation counters, reported in `meta_info` as SGLang names them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpecCounts {
    /// Verify passes this request took part in (`spec_verify_ct`).
    pub verify_ct: u64,
    /// Tokens those passes produced: accepted drafts + bonus tokens.
    pub verify_tokens: u64,
    /// Drafts accepted (`spec_accept_token_num`).
    pub accepted_drafts: u64,
    /// Drafts proposed (`spec_draft_token_num`).
    pub draft_tokens: u64,
}

impl SpecCounts {
    /// Tokens per verify pass, bonus included (`spec_accept_length`); 0 before any.
    pub fn accept_length(&self) -> f64 {
        if self.verify_ct == 0 { 0.0 } else { self.verify_tokens as f64 / self.verify_ct as f64 }
    }
    /// Accepted drafts / proposed drafts (`spec_accept_rate`); 0 before any.
    pub fn accept_rate(&self) -> f64 {
        if self.draft_tokens == 0 { 0.0 } else { self.accepted_drafts as f64 / self.draft_tokens as f64 }
    }
    /// Adds one verify pass that proposed `drafts` and kept `accepted` tokens.
    pub fn record(&mut self, drafts: usize, accepted: usize) {
        self.verify_ct += 1;
        self.verify_tokens += accepted as u64;
        self.accepted_drafts += accepted.saturating_sub(1) as u64;
        self.draft_tokens += drafts as u64;
    }
}

#[cfg(test)]
#[path = "speculative_tests.rs"]
mod tests;
