//! Submitting requests to the scheduler and gathering their outputs, shared by the
//! native and OpenAI routes.

use super::errors::{ApiError, ApiResult};
use super::AppState;
use crate::scheduler::{FinishReason, GenRequest, Output, SpecCounts, SubmitError, Ticket, TokenLogprob};
use super::conn::{self, ConnProbe};
use futures_util::stream::{self, Stream, StreamExt};
use std::sync::Arc;
use std::time::Instant;

/// Everything a request produced so far.
#[derive(Clone, Debug, Default)]
pub struct Acc {
    pub rid: String,
    pub ids: Vec<u32>,
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
    pub input_logprobs: Vec<TokenLogprob>,
    pub finish: Option<FinishReason>,
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    pub arrival: Option<Instant>,
    /// Speculation counters (the latest update's), when the server speculates.
    pub spec: Option<SpecCounts>,
}

impl Acc {
    pub fn new(req: &GenRequest) -> Self {
        Acc { rid: req.rid.clone(), prompt_tokens: req.prompt.len(), arrival: Some(req.arrival), ..Default::default() }
    }
    pub fn apply(&mut self, o: &Output) {
        self.ids.extend_from_slice(&o.ids);
        self.text.push_str(&o.text);
        self.logprobs.extend(o.logprobs.iter().cloned());
        if let Some(i) = &o.input_logprobs {
            self.input_logprobs = i.clone();
        }
        if o.finish.is_some() {
            self.finish = o.finish.clone();
        }
        self.prompt_tokens = o.prompt_tokens.max(self.prompt_tokens);
        self.cached_tokens = o.cached_tokens;
        if o.spec.is_some() {
            self.spec = o.spec;
        }
    }
    pub fn e2e_latency(&self) -> f64 {
        self.arrival.map(|a| a.elapsed().as_secs_f64()).unwrap_or(0.0)
    }
    /// An abort that carries an HTTP status (backend error, shutdown, scheduler-side
    /// validation) rather than a client's own abort.
    pub fn error(&self) -> Option<ApiError> {
        match &self.finish {
            Some(FinishReason::Abort { message, status: Some(code) }) => Some(ApiError::status_code(*code, message.clone())),
            _ => None,
        }
    }
}

pub fn submit_error(e: SubmitError) -> ApiError {
    ApiError::unavailable(e.to_string())
}

/// Submits every request, or none (tickets already taken are dropped, which aborts them).
pub fn submit_all(state: &AppState, reqs: Vec<GenRequest>) -> ApiResult<Vec<(Ticket, Acc)>> {
    let mut out = Vec::with_capacity(reqs.len());
    for r in reqs {
        let acc = Acc::new(&r);
        let t = state.sched.submit(r).map_err(submit_error)?;
        out.push((t, acc));
    }
    Ok(out)
}

/// Waits for a request to finish. A client disconnect drops this future and with it
/// the ticket, which aborts the request.
pub async fn run_to_end(mut t: Ticket, mut acc: Acc) -> ApiResult<Acc> {
    loop {
        let Some(o) = t.recv().await else {
            return Err(ApiError::internal("the scheduler stopped before the request finished"));
        };
        acc.apply(&o);
        if o.finish.is_some() {
            if let Some(e) = acc.error() {
                return Err(e);
            }
            return Ok(acc);
        }
    }
}

/// Waits for all requests (in order); the first error fails the whole batch. If the
/// client hangs up first, the tickets are dropped (aborting the requests).
pub async fn run_all(items: Vec<(Ticket, Acc)>, probe: Option<Arc<ConnProbe>>) -> ApiResult<Vec<Acc>> {
    let futs = items.into_iter().map(|(t, a)| run_to_end(t, a));
    tokio::select! {
        r = futures_util::future::join_all(futs) => r.into_iter().collect(),
        _ = conn::closed(probe) => Err(ApiError::new(actix_web::http::StatusCode::from_u16(499).unwrap(), "client closed the connection")),
    }
}

/// Ends `events` (dropping the tickets inside it) when the client hangs up.
pub fn until_closed<S: Stream + 'static>(events: S, probe: Option<Arc<ConnProbe>>) -> impl Stream<Item = S::Item> {
    events.take_until(Box::pin(conn::closed(probe)))
}

/// The outputs of one ticket as a stream; a scheduler that goes away without finishing
/// the request yields a final 500 abort.
pub fn outputs(t: Ticket) -> impl Stream<Item = Output> {
    stream::unfold(Some(t), |t| async move {
        let mut t = t?;
        match t.recv().await {
            Some(o) => {
                let more = o.finish.is_none();
                Some((o, more.then_some(t)))
            }
            None => Some((
                Output {
                    finish: Some(FinishReason::abort("the scheduler stopped before the request finished", Some(500))),
                    ..Default::default()
                },
                None,
            )),
        }
    })
}
