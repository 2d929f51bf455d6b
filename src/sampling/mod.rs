//! Token sampling on CPU logits: penalties, greedy, temperature, top-k, top-p, min-p,
//! seeded per-request RNG, and log-probabilities.
//!
//! Order (as SGLang applies it): logit_bias, penalties on the raw logits (repetition, frequency,
//! presence; output tokens only), minimum-length bans, padding-row mask (ids at or above
//! the tokenizer's vocabulary), then either argmax (greedy: temperature below 1e-6 or
//! top_k == 1; first index wins ties) or softmax(logits / temperature) filtered by top-k,
//! top-p and min-p and sampled with the request's ChaCha RNG. Log-probabilities are
//! log_softmax of the penalised, temperature-scaled logits (f64 accumulation, max
//! subtracted), before top-k/top-p/min-p filtering. A request with a grammar
//! (`grammar.rs`, structured output) also has every token its grammar forbids masked to
//! -inf after the bans, so the log-probabilities are those of the constrained choice.

pub mod grammar;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::collections::HashMap;

/// Temperatures below this are greedy (SGLang's threshold).
pub const GREEDY_EPS: f32 = 1e-6;

/// Resolved sampling parameters of one request (already validated).
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    pub top_p: f32,
    /// -1 (or 0) = the whole vocabulary.
    pub top_k: i64,
    pub min_p: f32,
    pub repetition_penalty: f32,
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    /// Per-request RNG seed; `None` draws one from the OS.
    pub seed: Option<u64>,
    /// Added to the logits of these ids before anything else.
    pub logit_bias: Vec<(u32, f32)>,
    /// Structured output: the grammar the output must follow.
    pub grammar: Option<grammar::Grammar>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: -1,
            min_p: 0.0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: None,
            logit_bias: Vec::new(),
            grammar: None,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams { temperature: 0.0, ..Default::default() }
    }
    pub fn is_greedy(&self) -> bool {
        self.temperature < GREEDY_EPS || self.top_k == 1
    }
    /// Whether a grammar masks the logits (greedy: on the device, see `Sampler::device_mask`).
    pub fn is_constrained(&self) -> bool {
        self.grammar.is_some()
    }
    pub fn has_penalties(&self) -> bool {
        self.repetition_penalty != 1.0
            || self.frequency_penalty != 0.0
            || self.presence_penalty != 0.0
            || !self.logit_bias.is_empty()
    }
}

/// What log-probability information a caller wants with each sampled token.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LogprobWant {
    /// Logprob of the chosen token.
    pub token: bool,
    /// This many most likely tokens with their logprobs.
    pub top_n: usize,
    /// Logprobs of these specific ids.
    pub ids: Vec<u32>,
}

impl LogprobWant {
    pub fn any(&self) -> bool {
        self.token || self.top_n > 0 || !self.ids.is_empty()
    }
}

/// One sampled token and the log-probabilities asked for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sampled {
    pub token: u32,
    pub logprob: Option<f32>,
    pub top: Vec<(u32, f32)>,
    pub ids: Vec<(u32, f32)>,
}

/// Per-request sampler state: parameters, RNG and output-token counts for penalties.
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha20Rng,
    counts: HashMap<u32, u32>,
    grammar: Option<grammar::GrammarMatcher>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = match params.seed {
            Some(s) => ChaCha20Rng::seed_from_u64(s),
            None => ChaCha20Rng::from_entropy(),
        };
        let grammar = params.grammar.as_ref().map(grammar::Grammar::matcher);
        Sampler { params, rng, counts: HashMap::new(), grammar }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Records a generated token (for frequency/presence/repetition penalties, and to
    /// advance the grammar).
    pub fn observe(&mut self, token: u32) {
        *self.counts.entry(token).or_insert(0) += 1;
        if let Some(g) = &mut self.grammar {
            g.accept(token);
        }
    }

    /// The grammar's current token mask (`GrammarMatcher::mask_words`), for a backend
    /// that takes the greedy argmax over the allowed ids itself; None without a grammar.
    /// `observe` then advances the grammar past the chosen token.
    pub fn device_mask(&mut self) -> Option<Vec<u32>> {
        self.grammar.as_mut().map(grammar::GrammarMatcher::mask_words)
    }

    /// Picks the next token from one row of logits. `vocab_limit`: ids at or above it are
    /// padding rows and never chosen. `banned`: ids that may not be chosen now (stop
    /// tokens before `min_new_tokens`).
    pub fn sample(&mut self, row: &[f32], vocab_limit: usize, banned: &[u32], want: &LogprobWant) -> Sampled {
        let limit = vocab_limit.min(row.len()).max(1);
        let needs_copy = self.params.has_penalties() || !banned.is_empty() || self.grammar.is_some();
        let mut owned;
        let logits: &[f32] = if needs_copy {
            owned = row[..limit].to_vec();
            self.apply_penalties(&mut owned);
            for &b in banned {
                if (b as usize) < limit {
                    owned[b as usize] = f32::NEG_INFINITY;
                }
            }
            if let Some(g) = &mut self.grammar {
                g.mask_logits(&mut owned);
            }
            &owned
        } else {
            &row[..limit]
        };
        let greedy = self.params.is_greedy();
        let temp = if greedy { 1.0 } else { self.params.temperature };
        let token = if greedy { argmax(logits) } else { self.draw(logits, temp) };
        let mut out = Sampled { token: token as u32, ..Default::default() };
        if want.any() {
            let lse = log_sum_exp(logits, temp);
            let lp = |i: usize| (logits[i] as f64 / temp as f64 - lse) as f32;
            if want.token {
                out.logprob = Some(lp(token));
            }
            if want.top_n > 0 {
                out.top = top_n(logits, want.top_n).into_iter().map(|i| (i as u32, lp(i))).collect();
            }
            out.ids = want
                .ids
                .iter()
                .map(|&id| (id, if (id as usize) < limit { lp(id as usize) } else { f32::NEG_INFINITY }))
                .collect();
        }
        out
    }

    fn apply_penalties(&self, logits: &mut [f32]) {
        let p = &self.params;
        for &(tok, b) in &p.logit_bias {
            if let Some(x) = logits.get_mut(tok as usize) {
                *x += b;
            }
        }
        for (&tok, &n) in &self.counts {
            let Some(x) = logits.get_mut(tok as usize) else { continue };
            if p.repetition_penalty != 1.0 {
                *x = if *x > 0.0 { *x / p.repetition_penalty } else { *x * p.repetition_penalty };
            }
            *x -= p.frequency_penalty * n as f32 + p.presence_penalty;
        }
    }

    /// Samples from softmax(logits / temp) after top-k, top-p and min-p filtering.
    fn draw(&mut self, logits: &[f32], temp: f32) -> usize {
        let p = &self.params;
        let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        if !max.is_finite() {
            return argmax(logits);
        }
        let inv_t = 1.0 / temp as f64;
        let probs: Vec<f64> = logits.iter().map(|&x| ((x - max) as f64 * inv_t).exp()).collect();
        let full = p.top_k <= 0 || p.top_k as usize >= logits.len();
        if full && p.top_p >= 1.0 && p.min_p <= 0.0 {
            let total: f64 = probs.iter().sum();
            return pick(&mut self.rng, total, probs.iter().enumerate().map(|(i, &q)| (i, q)));
        }
        // Candidates sorted by probability (descending), ties by lower id. Sorting the
        // whole vocabulary is slow, so first try only tokens within 1e-4 of the top one:
        // they are a prefix of the sorted order, so when they hold the top-p mass (and
        // top-k / min-p cut inside them) the result is the same as with every token.
        let by_prob = |a: &usize, b: &usize| probs[*b].total_cmp(&probs[*a]).then(a.cmp(b));
        let total_all: f64 = probs.iter().sum();
        let thresh = (1e-4f64).max(p.min_p as f64);
        let mut cand: Vec<usize> = (0..logits.len()).filter(|&i| probs[i] >= thresh).collect();
        let mass: f64 = cand.iter().map(|&i| probs[i]).sum();
        let use_prefix = if full {
            // The nucleus ends inside the prefix, or min-p drops everything outside it.
            (p.top_p < 1.0 && mass > p.top_p as f64 * total_all) || p.min_p as f64 >= 1e-4
        } else {
            (p.top_k as usize) <= cand.len()
        };
        if !use_prefix {
            cand = (0..logits.len()).filter(|&i| probs[i] > 0.0).collect();
        }
        if !full && (p.top_k as usize) < cand.len() {
            cand.select_nth_unstable_by(p.top_k as usize - 1, by_prob);
            cand.truncate(p.top_k as usize);
        }
        cand.sort_unstable_by(by_prob);
        // top-p is relative to the whole distribution, or to the top-k set.
        let total: f64 = if full { total_all } else { cand.iter().map(|&i| probs[i]).sum() };
        if p.top_p < 1.0 {
            let mut cum = 0.0;
            let mut keep = 0;
            for &i in &cand {
                if keep > 0 && cum > p.top_p as f64 * total {
                    break;
                }
                cum += probs[i];
                keep += 1;
            }
            cand.truncate(keep.max(1));
        }
        if p.min_p > 0.0 {
            let thresh = probs[cand[0]] * p.min_p as f64;
            cand.retain(|&i| probs[i] >= thresh);
        }
        let total: f64 = cand.iter().map(|&i| probs[i]).sum();
        pick(&mut self.rng, total, cand.iter().map(|&i| (i, probs[i])))
    }
}

fn pick(rng: &mut ChaCha20Rng, total: f64, items: impl Iterator<Item = (usize, f64)>) -> usize {
    let mut u = rng.gen::<f64>() * total;
    let mut last = 0;
    for (i, q) in items {
        if q <= 0.0 {
            continue;
        }
        last = i;
        if u < q {
            return i;
        }
        u -= q;
    }
    last
}

/// Index of the largest value; the first index wins ties; NaN never wins.
///
/// Runs 16 independent lanes (each keeps the first index of its maximum) so the compiler
/// can vectorise it; a vocabulary-sized row is the scheduler's hottest loop per token.
pub fn argmax(x: &[f32]) -> usize {
    const L: usize = 16;
    let mut m = [f32::NEG_INFINITY; L];
    let mut idx = [0u32; L];
    let chunks = x.chunks_exact(L);
    let tail = chunks.remainder();
    for (c, chunk) in chunks.enumerate() {
        let base = (c * L) as u32;
        for l in 0..L {
            let v = chunk[l];
            let better = v > m[l];
            m[l] = if better { v } else { m[l] };
            idx[l] = if better { base + l as u32 } else { idx[l] };
        }
    }
    // Largest lane maximum; on ties the lowest index. Lanes still at -inf saw nothing.
    let mut best = 0usize;
    let mut bv = f32::NEG_INFINITY;
    for l in 0..L {
        if m[l] > bv || (m[l] == bv && m[l] > f32::NEG_INFINITY && (idx[l] as usize) < best) {
            bv = m[l];
            best = idx[l] as usize;
        }
    }
    let start = x.len() - tail.len();
    for (i, &v) in tail.iter().enumerate() {
        if v > bv {
            bv = v;
            best = start + i;
        }
    }
    best
}

/// log(sum(exp(x / temp))) with the maximum subtracted, accumulated in f64.
pub fn log_sum_exp(x: &[f32], temp: f32) -> f64 {
    let t = temp as f64;
    let max = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64 / t;
    if !max.is_finite() {
        return max;
    }
    let s: f64 = x.iter().map(|&v| (v as f64 / t - max).exp()).sum();
    max + s.ln()
}

/// log_softmax of `x[id]` over `x` (temperature 1).
pub fn logprob_of(x: &[f32], id: usize) -> f32 {
    (x[id] as f64 - log_sum_exp(x, 1.0)) as f32
}

/// Indices of the `n` largest values, largest first (ties: lower index first).
pub fn top_n(x: &[f32], n: usize) -> Vec<usize> {
    let n = n.min(x.len());
    if n == 0 {
        return vec![];
    }
    let cmp = |a: &usize, b: &usize| x[*b].total_cmp(&x[*a]).then(a.cmp(b));
    let mut idx: Vec<usize> = (0..x.len()).collect();
    if n < idx.len() {
        idx.select_nth_unstable_by(n - 1, cmp);
        idx.truncate(n);
    }
    idx.sort_unstable_by(cmp);
    idx
}

#[cfg(test)]
mod tests;
