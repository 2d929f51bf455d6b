//! Speculative decoding through the scheduler and the HTTP server on the mock backend: a
//! speculating mock (drafts right or wrong by a seeded pattern, so bursts of every length
//! occur) must give exactly the output of plain decoding for every stop rule: EOS,
//! stop_token_ids, stop strings, max_new_tokens, min_new_tokens, streaming; sampled and
//! logprob requests decode plainly beside speculating ones; meta_info and server_info
//! report SGLang's speculative fields.

mod common;

use anyhow::Result;
use common::mock::*;
use common::server::TestServer;
use kiln::backend::speculative::accepted_len;
use kiln::backend::{Backend, Capacity, ChunkLogits, DraftChunk, SeqChunk, Verified, VerifyChunk, Want};
use kiln::config::ModelConfig;
use kiln::sampling::SamplingParams;
use kiln::scheduler::{self, FinishReason, GenRequest, Output, SchedulerConfig, SpecConfig, SpecPolicy, StopConfig};
use kiln::server::ServerConfig;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// The mock backend with speculation: a draft is the mock's own greedy continuation, made
/// wrong at seeded positions (`wrong_one_in` of them, 0: never); verify checks it against
/// the mock's logits and feeds the accepted tokens to the inner mock.
struct SpecMock {
    inner: MockBackend,
    history: Vec<Vec<u32>>,
    wrong_one_in: u64,
    verifies: Arc<AtomicU64>,
}

impl SpecMock {
    fn new(c: Capacity, wrong_one_in: u64) -> Self {
        SpecMock { inner: MockBackend::new(c), history: vec![vec![]; c.slots], wrong_one_in, verifies: Arc::default() }
    }
}

fn greedy_after(seq: &[u32], limit: usize) -> u32 {
    kiln::sampling::argmax(&logits_for(history_hash(seq))[..limit]) as u32
}

impl Backend for SpecMock {
    fn name(&self) -> &'static str {
        "spec-mock"
    }
    fn config(&self) -> &ModelConfig {
        self.inner.config()
    }
    fn capacity(&self) -> Capacity {
        self.inner.capacity()
    }
    fn forward(&mut self, chunks: &[SeqChunk<'_>]) -> Result<Vec<ChunkLogits>> {
        let out = self.inner.forward(chunks)?;
        for c in chunks {
            self.history[c.slot].extend_from_slice(c.tokens);
        }
        Ok(out)
    }
    fn reset_slot(&mut self, slot: usize) -> Result<()> {
        self.history[slot].clear();
        self.inner.reset_slot(slot)
    }
    fn supports_speculation(&self) -> bool {
        true
    }
    fn draft(&mut self, seqs: &[DraftChunk<'_>]) -> Result<Vec<Vec<u32>>> {
        Ok(seqs
            .iter()
            .map(|c| {
                assert_eq!(self.history[c.slot].len(), c.pos, "draft position");
                let mut seq = self.history[c.slot].clone();
                seq.push(c.next);
                (0..c.steps)
                    .map(|j| {
                        let g = greedy_after(&seq, c.limit);
                        let wrong = self.wrong_one_in > 0 && history_hash(&seq).wrapping_add(j as u64).is_multiple_of(self.wrong_one_in);
                        let d = if wrong { (g + 1) % c.limit as u32 } else { g };
                        seq.push(d);
                        d
                    })
                    .collect()
            })
            .collect())
    }
    fn verify(&mut self, seqs: &[VerifyChunk<'_>]) -> Result<Vec<Verified>> {
        let mut out = vec![];
        for c in seqs {
            assert_eq!(self.history[c.slot].len(), c.start_pos, "verify position");
            let mut seq = self.history[c.slot].clone();
            let greedy: Vec<u32> = c.tokens.iter().map(|&t| {
                seq.push(t);
                greedy_after(&seq, c.limit)
            }).collect();
            let accepted = accepted_len(c.tokens, &greedy);
            let keep = &c.tokens[..accepted];
            self.inner.forward(&[SeqChunk { slot: c.slot, start_pos: c.start_pos, tokens: keep, blocks: c.blocks, want: Want::Nothing, allowed: None }])?;
            self.history[c.slot].extend_from_slice(keep);
            out.push(Verified { greedy, accepted });
        }
        self.verifies.fetch_add(seqs.len() as u64, Relaxed);
        Ok(out)
    }
}

fn spec_cfg() -> SchedulerConfig {
    SchedulerConfig {
        eos_token_ids: vec![EOS],
        speculative: Some(SpecConfig { num_steps: 3, policy: SpecPolicy::Always, draft_vocab: None }),
        ..Default::default()
    }
}

fn collect(mut t: scheduler::Ticket) -> (Vec<u32>, String, FinishReason, Vec<Output>) {
    let (mut ids, mut text, mut outs) = (vec![], String::new(), vec![]);
    loop {
        let o = t.blocking_recv().expect("the scheduler finishes every request");
        ids.extend(&o.ids);
        text.push_str(&o.text);
        outs.push(o.clone());
        if let Some(f) = o.finish {
            return (ids, text, f, outs);
        }
    }
}

fn prompt(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32).map(|i| 0x61 + (seed * 11 + i * 5) % 26).collect()
}

/// A request with stop rules drawn from `seed`: stop strings, stop ids, EOS on or off,
/// min_new_tokens, a small max_new_tokens.
fn request(seed: u32) -> GenRequest {
    let stop = StopConfig {
        max_new_tokens: 5 + (seed as usize * 7) % 40,
        min_new_tokens: if seed.is_multiple_of(5) { 3 } else { 0 },
        stop: match seed % 4 {
            0 => vec![],
            1 => vec!["e".into()],
            2 => vec!["ab".into(), "q".into()],
            _ => vec![" t".into()],
        },
        stop_token_ids: if seed.is_multiple_of(3) { vec![0x61 + seed % 26] } else { vec![] },
        ignore_eos: seed % 6 == 1,
        no_stop_trim: seed.is_multiple_of(7),
        ..Default::default()
    };
    GenRequest::new(format!("r{seed}"), prompt(seed, 3 + seed as usize % 13), SamplingParams::greedy(), stop)
}

fn run_all(backend: Box<dyn Backend>, cfg: SchedulerConfig, reqs: &[GenRequest]) -> Vec<(Vec<u32>, String, FinishReason, Vec<Output>)> {
    let h = scheduler::spawn(backend, Arc::new(ByteCodec), cfg).unwrap();
    let tickets: Vec<_> = reqs.iter().map(|r| h.submit(r.clone()).unwrap()).collect();
    tickets.into_iter().map(collect).collect()
}

#[test]
fn every_stop_rule_gives_plain_output_whatever_is_accepted() {
    let reqs: Vec<GenRequest> = (0..60).map(request).collect();
    let c = cap(6, 400, 8, 256);
    let plain = run_all(Box::new(MockBackend::new(c)), SchedulerConfig { eos_token_ids: vec![EOS], ..Default::default() }, &reqs);
    // Drafts always right (every stop lands inside a burst), right 3 times in 4, never right.
    for wrong_one_in in [0u64, 4, 1] {
        let b = SpecMock::new(c, wrong_one_in);
        let verifies = b.verifies.clone();
        let spec = run_all(Box::new(b), spec_cfg(), &reqs);
        for (i, (p, s)) in plain.iter().zip(&spec).enumerate() {
            assert_eq!((&s.0, &s.1, &s.2), (&p.0, &p.1, &p.2), "request {i} (wrong 1 in {wrong_one_in}) differs from plain decoding");
            // Nothing after a stop: the final update is the last, and ids match the count.
            let counts = s.3.last().unwrap().spec.expect("speculating servers report counters");
            assert!(counts.verify_tokens as usize <= s.0.len() + 3, "request {i}: more verified tokens than the burst could hold");
        }
        assert!(verifies.load(Relaxed) > 0, "speculation never ran");
        if wrong_one_in == 0 {
            // Full acceptance: bursts of several tokens arrive as one update.
            assert!(spec.iter().any(|s| s.3.iter().any(|o| o.ids.len() > 1)), "no multi-token update");
        }
    }
}

#[test]
fn sampled_and_logprob_requests_decode_plainly_beside_speculating_ones() {
    let c = cap(6, 400, 8, 256);
    let greedy = request(2);
    let mut sampled = request(3);
    sampled.sampling = SamplingParams { temperature: 0.8, seed: Some(5), ..SamplingParams::default() };
    let mut lp = request(4);
    lp.logprobs.enabled = true;
    // Greedy under a grammar: drafts and verification know nothing of the mask.
    let codec = ByteCodec;
    let enc = |s: &str| s.bytes().map(u32::from).collect();
    let engine = kiln::sampling::grammar::GrammarEngine::new(kiln::scheduler::Codec::token_bytes(&codec).unwrap(), EOS, Box::new(enc)).unwrap();
    let mut constrained = request(6);
    constrained.stop = StopConfig { max_new_tokens: 40, ..Default::default() };
    let grammar = engine.compile(&kiln::sampling::grammar::GrammarSpec::Regex("[a-f]{3}x[0-9]*".into())).unwrap();
    constrained.sampling = SamplingParams { grammar: Some(grammar), ..SamplingParams::greedy() };
    let reqs = vec![greedy, sampled, lp, constrained];
    let plain = run_all(Box::new(MockBackend::new(c)), SchedulerConfig { eos_token_ids: vec![EOS], ..Default::default() }, &reqs);
    let spec = run_all(Box::new(SpecMock::new(c, 0)), spec_cfg(), &reqs);
    for (p, s) in plain.iter().zip(&spec) {
        assert_eq!((&s.0, &s.1, &s.2), (&p.0, &p.1, &p.2));
    }
    let verify_ct = |r: &(Vec<u32>, String, FinishReason, Vec<Output>)| r.3.last().unwrap().spec.unwrap().verify_ct;
    assert!(verify_ct(&spec[0]) > 0, "the greedy request speculates");
    assert_eq!(verify_ct(&spec[1]), 0, "a sampled request never speculates");
    assert_eq!(verify_ct(&spec[2]), 0, "a logprobs request never speculates");
    assert_eq!(verify_ct(&spec[3]), 0, "a constrained request never speculates");
    let text = &spec[3].1;
    assert!(text.len() >= 4 && text[..3].bytes().all(|b| (b'a'..=b'f').contains(&b)) && &text[3..4] == "x", "{text:?}");
    // Logprobs still come one per token.
    let lp_entries: usize = spec[2].3.iter().map(|o| o.logprobs.len()).sum();
    assert_eq!(lp_entries, spec[2].0.len());
}

#[test]
fn a_backend_without_speculation_is_refused_at_start() {
    let Err(e) = scheduler::spawn(Box::new(MockBackend::new(cap(2, 16, 8, 64))), Arc::new(ByteCodec), spec_cfg()) else {
        panic!("a mock without MTP must be refused");
    };
    assert!(e.to_string().contains("MTP head"), "{e}");
}

fn spec_server(wrong_one_in: u64) -> TestServer {
    let c = cap(8, 400, 16, 512);
    TestServer::start(Box::new(SpecMock::new(c, wrong_one_in)), Arc::new(ByteCodec), spec_cfg(), ServerConfig::default())
}

#[actix_web::test]
async fn http_output_meta_info_and_streaming_match_plain_decoding() {
    let (plain, _) = TestServer::mock_default();
    let spec = spec_server(4);
    for (i, body) in [
        json!({"text": "hello", "sampling_params": {"temperature": 0, "max_new_tokens": 40, "ignore_eos": true}}),
        json!({"text": "abc", "sampling_params": {"temperature": 0, "max_new_tokens": 30, "stop": ["e", "zz"]}}),
        json!({"input_ids": [104, 105], "sampling_params": {"temperature": 0, "max_new_tokens": 25, "stop_token_ids": [0x61, 0x6f]}}),
    ]
    .iter()
    .enumerate()
    {
        let want = plain.post_json("/generate", body, 200).await;
        let got = spec.post_json("/generate", body, 200).await;
        assert_eq!(got["text"], want["text"], "case {i}");
        assert_eq!(got["output_ids"], want["output_ids"], "case {i}");
        assert_eq!(got["meta_info"]["finish_reason"], want["meta_info"]["finish_reason"], "case {i}");
        let m = &got["meta_info"];
        let ct = m["spec_verify_ct"].as_u64().expect("spec_verify_ct");
        let toks = m["completion_tokens"].as_u64().unwrap();
        if toks > 1 {
            assert!(ct >= 1, "case {i}: {m}");
            let len = m["spec_accept_length"].as_f64().unwrap();
            assert!((1.0..=4.0).contains(&len), "case {i}: {m}");
            assert!(m["spec_draft_token_num"].as_u64().unwrap() >= m["spec_accept_token_num"].as_u64().unwrap());
        }
        assert!(want["meta_info"].get("spec_verify_ct").is_none(), "a plain server reports no spec fields");
        // Streaming: the events add up to the same text and ids.
        let mut sbody = body.clone();
        sbody["stream"] = json!(true);
        let events = spec.post_sse("/generate", &sbody).await;
        let last: &Value = events.last().unwrap();
        assert_eq!(last["text"], want["text"], "case {i} streamed");
        assert_eq!(last["output_ids"], want["output_ids"], "case {i} streamed");
        let counts: Vec<u64> = events.iter().map(|e| e["meta_info"]["completion_tokens"].as_u64().unwrap()).collect();
        assert!(counts.windows(2).all(|w| w[0] <= w[1]), "case {i}: completion_tokens never go back: {counts:?}");
    }
    let info: Value = spec.get("/get_server_info").await.json().await.unwrap();
    let avg = info["internal_states"][0]["avg_spec_accept_length"].as_f64().expect("avg_spec_accept_length once speculation ran");
    assert!((1.0..=4.0).contains(&avg), "{avg}");
    let plain_info: Value = plain.get("/get_server_info").await.json().await.unwrap();
    assert!(plain_info["internal_states"][0]["avg_spec_accept_length"].is_null());
    spec.wait_idle().await;
}
