//! What the server submits to the scheduler and what comes back.

use super::speculative::SpecCounts;
use crate::sampling::SamplingParams;
use std::time::Instant;

/// When a request stops (besides EOS, which the scheduler knows).
#[derive(Clone, Debug, PartialEq)]
pub struct StopConfig {
    /// Cap on generated tokens (already clamped to the context by the server).
    pub max_new_tokens: usize,
    /// Stop tokens and EOS are banned until this many tokens exist.
    pub min_new_tokens: usize,
    /// Stop strings: the text is cut before the first match (never emitted).
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    /// Disables EOS and `stop_token_ids` (stop strings still apply), as SGLang.
    pub ignore_eos: bool,
    /// Keep the matched stop string / stop token text.
    pub no_stop_trim: bool,
    pub skip_special_tokens: bool,
}

impl Default for StopConfig {
    fn default() -> Self {
        StopConfig {
            max_new_tokens: 128,
            min_new_tokens: 0,
            stop: vec![],
            stop_token_ids: vec![],
            ignore_eos: false,
            no_stop_trim: false,
            skip_special_tokens: true,
        }
    }
}

/// Log-probabilities to return (SGLang's `return_logprob` family).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LogprobConfig {
    pub enabled: bool,
    /// First prompt position with an input logprob; -1 = only the last prompt token.
    pub start_len: i64,
    pub top_n: usize,
    pub token_ids: Vec<u32>,
}

/// One generation request (one prompt, one sample).
#[derive(Clone, Debug)]
pub struct GenRequest {
    /// The client-visible request id (`rid`); `/abort_request` matches it.
    pub rid: String,
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    pub stop: StopConfig,
    pub logprobs: LogprobConfig,
    pub arrival: Instant,
}

impl GenRequest {
    pub fn new(rid: impl Into<String>, prompt: Vec<u32>, sampling: SamplingParams, stop: StopConfig) -> Self {
        GenRequest {
            rid: rid.into(),
            prompt,
            sampling,
            stop,
            logprobs: LogprobConfig::default(),
            arrival: Instant::now(),
        }
    }
}

/// Why a request ended.
#[derive(Clone, Debug, PartialEq)]
pub enum FinishReason {
    /// Reached `max_new_tokens` (the value is that cap).
    Length(usize),
    /// Generated an EOS or `stop_token_ids` id.
    StopToken(u32),
    /// The text matched a stop string.
    StopString(String),
    /// Aborted (client gone, `/abort_request`, shutdown, queue full, backend error).
    Abort { message: String, status: Option<u16> },
}

impl FinishReason {
    pub fn kind(&self) -> &'static str {
        match self {
            FinishReason::Length(_) => "length",
            FinishReason::StopToken(_) | FinishReason::StopString(_) => "stop",
            FinishReason::Abort { .. } => "abort",
        }
    }
    pub fn abort(message: impl Into<String>, status: Option<u16>) -> Self {
        FinishReason::Abort { message: message.into(), status }
    }
}

/// Log-probabilities at one position: the token there, its logprob (None for the first
/// input position), the top alternatives and the requested ids.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: Option<f32>,
    pub top: Vec<(u32, f32)>,
    pub ids: Vec<(u32, f32)>,
}

/// One update for a request: sent once per step in which it produced a token, plus a
/// final one (which may also carry the last token).
#[derive(Clone, Debug, Default)]
pub struct Output {
    /// Token ids generated since the previous update.
    pub ids: Vec<u32>,
    /// Text committed since the previous update (stop strings held back / removed).
    pub text: String,
    /// One entry per id in `ids` when logprobs were asked for.
    pub logprobs: Vec<TokenLogprob>,
    /// Prompt logprobs, once (with the first update) when asked for.
    pub input_logprobs: Option<Vec<TokenLogprob>>,
    pub finish: Option<FinishReason>,
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    /// The request's speculation counters so far, when the server speculates.
    pub spec: Option<SpecCounts>,
}
