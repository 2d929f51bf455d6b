//! Scheduler tests on the deterministic mock backend: correctness against direct greedy,
//! batch invariance, chunked prefill mixed with decode, retraction under KV pressure,
//! stops, aborts, queue bound, shutdown, backend errors; and no leaked slots or blocks.

mod common;

use common::mock::*;
use kiln::sampling::SamplingParams;
use kiln::scheduler::{self, FinishReason, GenRequest, Output, SchedulerConfig, SchedulerHandle, StopConfig, SubmitError};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn start(c: kiln::backend::Capacity, cfg: SchedulerConfig) -> (SchedulerHandle, Arc<MockStats>) {
    let b = MockBackend::new(c);
    let st = b.stats.clone();
    let cfg = SchedulerConfig { eos_token_ids: vec![EOS], ..cfg };
    (scheduler::spawn(Box::new(b), Arc::new(ByteCodec), cfg).unwrap(), st)
}

fn req(prompt: &[u32], max_new: usize) -> GenRequest {
    GenRequest::new("r", prompt.to_vec(), SamplingParams::greedy(), StopConfig { max_new_tokens: max_new, ..Default::default() })
}

/// Collects a ticket: (ids, text, finish).
fn collect(mut t: scheduler::Ticket) -> (Vec<u32>, String, FinishReason) {
    let mut ids = vec![];
    let mut text = String::new();
    loop {
        let o: Output = t.blocking_recv().expect("scheduler ended without finishing the request");
        ids.extend(&o.ids);
        text.push_str(&o.text);
        if let Some(f) = o.finish {
            return (ids, text, f);
        }
    }
}

fn wait_idle(h: &SchedulerHandle) {
    let t0 = Instant::now();
    while !h.stats().is_idle() {
        assert!(t0.elapsed() < Duration::from_secs(10), "scheduler never became idle");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn prompt(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32).map(|i| 0x61 + (seed * 7 + i * 3) % 26).collect()
}

#[test]
fn single_request_matches_direct_greedy() {
    let (h, st) = start(cap(4, 64, 16, 512), SchedulerConfig::default());
    let p = prompt(1, 10);
    let (ids, text, f) = collect(h.submit(req(&p, 20)).unwrap());
    let want = reference_greedy(&p, 20, true);
    assert_eq!(ids, want);
    let expect_text: Vec<u8> = want.iter().filter(|&&t| t < 256).map(|&t| t as u8).collect();
    assert_eq!(text.as_bytes(), &expect_text[..]);
    match f {
        FinishReason::Length(20) => assert_ne!(*want.last().unwrap(), EOS),
        FinishReason::StopToken(EOS) => assert_eq!(*want.last().unwrap(), EOS),
        other => panic!("unexpected finish {other:?}"),
    }
    wait_idle(&h);
    assert!(st.errors.lock().unwrap().is_empty());
}

#[test]
fn concurrent_requests_are_batch_invariant_with_chunked_prefill_and_retraction() {
    // 4 slots, 12 blocks of 8 tokens: long prompts force chunking (budget 16) and the
    // block pool forces retraction while decoding.
    let (h, st) = start(cap(4, 12, 8, 96), SchedulerConfig { chunked_prefill_size: 16, ..Default::default() });
    let reqs: Vec<(Vec<u32>, usize)> = (0..24).map(|i| (prompt(i, 5 + (i as usize * 7) % 40), 10 + (i as usize % 3) * 8)).collect();
    let tickets: Vec<_> = reqs
        .iter()
        .map(|(p, n)| {
            let mut r = req(p, *n);
            r.stop.ignore_eos = true;
            h.submit(r).unwrap()
        })
        .collect();
    for (t, (p, n)) in tickets.into_iter().zip(&reqs) {
        let (ids, _, f) = collect(t);
        assert_eq!(ids, reference_greedy(p, *n, false), "prompt {p:?}");
        assert_eq!(f, FinishReason::Length(*n));
    }
    wait_idle(&h);
    assert!(st.errors.lock().unwrap().is_empty(), "{:?}", st.errors.lock().unwrap());
    assert!(st.max_chunks.load(Relaxed) > 1, "requests were never batched");
    assert!(st.max_step_tokens.load(Relaxed) <= 16, "a step went over the token budget");
    assert!(st.mixed_steps.load(Relaxed) > 0, "prefill never mixed with decode");
    // Prefill chunks are cut at multiples of 16 - 4 (budget less one token per slot)
    // whatever else is running, so a prompt is split the same way alone or under load.
    let cuts = st.prefill_chunks.lock().unwrap().clone();
    assert!(cuts.iter().any(|&(_, n)| n == 12), "no full aligned chunk was seen: {cuts:?}");
    for (start, n) in cuts {
        assert!(start % 12 == 0 && n <= 12, "prefill chunk at {start} of {n} tokens is not aligned to 12");
    }
    assert!(h.stats().retractions.load(Relaxed) > 0, "the test should exercise retraction");
}

#[test]
fn stop_strings_stop_ids_min_tokens_and_ignore_eos() {
    let (h, _st) = start(cap(4, 64, 16, 512), SchedulerConfig::default());
    let p = prompt(3, 8);
    let free = reference_greedy(&p, 40, false);
    let free_text: String = free.iter().filter(|&&t| t < 256).map(|&t| t as u8 as char).collect();
    // A stop string made of text that spans two tokens in the middle of the output.
    let stop: String = free_text[5..7].to_string();
    let first = free_text.find(&stop).unwrap();
    let mut r = req(&p, 40);
    r.stop.ignore_eos = true;
    r.stop.stop = vec![stop.clone()];
    let (ids, text, f) = collect(h.submit(r.clone()).unwrap());
    assert_eq!(f, FinishReason::StopString(stop.clone()));
    assert_eq!(text, &free_text[..first]);
    assert_eq!(ids, free[..first + stop.len()]);
    // no_stop_trim keeps it.
    r.stop.no_stop_trim = true;
    let (_, text, _) = collect(h.submit(r).unwrap());
    assert_eq!(text, &free_text[..first + stop.len()]);
    // stop_token_ids: stop on the 4th output token; its text is not emitted.
    let mut r = req(&p, 40);
    r.stop.stop_token_ids = vec![free[3]];
    let k = free.iter().position(|&t| t == free[3]).unwrap();
    let (ids, text, f) = collect(h.submit(r.clone()).unwrap());
    assert_eq!(f, FinishReason::StopToken(free[3]));
    assert_eq!(ids, free[..=k]);
    assert_eq!(text, &free_text[..k]);
    // ignore_eos disables stop_token_ids too.
    r.stop.ignore_eos = true;
    r.stop.max_new_tokens = 6;
    let (ids, _, f) = collect(h.submit(r).unwrap());
    assert_eq!((ids.len(), f), (6, FinishReason::Length(6)));
    // min_new_tokens bans the stop id before it.
    let mut r = req(&p, 12);
    r.stop.stop_token_ids = vec![free[0]];
    r.stop.min_new_tokens = 3;
    let (ids, _, _) = collect(h.submit(r).unwrap());
    assert_ne!(ids[0], free[0]);
    wait_idle(&h);
}

#[test]
fn dropping_a_ticket_aborts_and_frees_everything() {
    let (h, st) = start(cap(4, 64, 16, 256), SchedulerConfig::default());
    st.delay_ms.store(5, Relaxed);
    let mut keep = vec![];
    for i in 0..6 {
        let mut r = req(&prompt(i, 30), 200);
        r.stop.ignore_eos = true;
        let mut t = h.submit(r).unwrap();
        if i % 2 == 0 {
            // Drop after the first token (mid-decode) ...
            t.blocking_recv().unwrap();
            drop(t);
        } else {
            keep.push(t);
        }
    }
    // ... and the rest while still queued / mid-prefill.
    drop(keep);
    wait_idle(&h);
    assert_eq!(h.stats().requests_aborted.load(Relaxed), 6);
}

#[test]
fn abort_by_rid_finishes_with_abort() {
    let (h, st) = start(cap(2, 16, 16, 256), SchedulerConfig::default());
    st.delay_ms.store(5, Relaxed);
    let mut r = req(&prompt(1, 4), 200);
    r.rid = "victim".into();
    r.stop.ignore_eos = true;
    let mut t = h.submit(r).unwrap();
    t.blocking_recv().unwrap();
    h.abort_rid("victim");
    let (_, _, f) = collect(t);
    assert!(matches!(f, FinishReason::Abort { .. }), "{f:?}");
    wait_idle(&h);
}

#[test]
fn queue_bound_rejects_then_recovers() {
    let (h, st) = start(cap(1, 16, 16, 256), SchedulerConfig { max_queued: 2, ..Default::default() });
    st.delay_ms.store(10, Relaxed);
    let mut ts = vec![];
    let mut rejected = 0;
    for i in 0..8 {
        let mut r = req(&prompt(i, 4), 5);
        r.stop.ignore_eos = true;
        match h.submit(r) {
            Ok(t) => ts.push(t),
            Err(SubmitError::QueueFull { limit: 2 }) => rejected += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(rejected > 0);
    for t in ts {
        let (ids, _, _) = collect(t);
        assert_eq!(ids.len(), 5);
    }
    wait_idle(&h);
    assert!(h.submit(req(&prompt(0, 4), 2)).is_ok());
}

#[test]
fn backend_error_fails_the_step_and_the_scheduler_keeps_serving() {
    let (h, st) = start(cap(2, 16, 16, 256), SchedulerConfig::default());
    st.fail_next.store(true, Relaxed);
    let (_, _, f) = collect(h.submit(req(&prompt(1, 4), 5)).unwrap());
    assert!(matches!(f, FinishReason::Abort { status: Some(500), .. }), "{f:?}");
    let p = prompt(2, 4);
    let (ids, _, _) = collect(h.submit(req(&p, 5)).unwrap());
    assert_eq!(ids, reference_greedy(&p, 5, true));
    wait_idle(&h);
}

#[test]
fn shutdown_drains_then_aborts_explicitly() {
    let (h, st) = start(cap(1, 16, 16, 256), SchedulerConfig::default());
    st.delay_ms.store(20, Relaxed);
    let mut short = req(&prompt(1, 4), 3);
    short.stop.ignore_eos = true;
    let mut long = req(&prompt(2, 4), 10_000);
    long.stop.ignore_eos = true;
    let t1 = h.submit(short).unwrap();
    // The short one runs before shutdown starts (a request still queued then gets 503 at once).
    while h.stats().running.load(Relaxed) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let t2 = h.submit(long).unwrap();
    let h2 = h.clone();
    let j = std::thread::spawn(move || h2.shutdown(Duration::from_millis(300)));
    let (ids, _, f) = collect(t1);
    assert_eq!((ids.len(), f), (3, FinishReason::Length(3)));
    let (_, _, f) = collect(t2);
    assert!(matches!(f, FinishReason::Abort { status: Some(503), .. }), "{f:?}");
    j.join().unwrap();
    assert!(!h.is_alive());
    assert_eq!(h.submit(req(&prompt(1, 4), 3)).err(), Some(SubmitError::ShuttingDown));
}

#[test]
fn requests_queued_at_shutdown_get_503_at_once() {
    let (h, st) = start(cap(1, 16, 16, 256), SchedulerConfig::default());
    // 252 tokens (the context) at 10 ms a step outlast the 1.5 s grace.
    st.delay_ms.store(10, Relaxed);
    let mut long = req(&prompt(1, 4), 10_000);
    long.stop.ignore_eos = true;
    let running = h.submit(long.clone()).unwrap();
    while h.stats().running.load(Relaxed) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let queued = h.submit(long).unwrap();
    let h2 = h.clone();
    let t0 = Instant::now();
    let j = std::thread::spawn(move || h2.shutdown(Duration::from_millis(1500)));
    let (_, _, f) = collect(queued);
    assert!(matches!(f, FinishReason::Abort { status: Some(503), .. }), "{f:?}");
    assert!(t0.elapsed() < Duration::from_millis(500), "the queued request waited {:?}", t0.elapsed());
    let (_, _, f) = collect(running);
    assert!(matches!(f, FinishReason::Abort { status: Some(503), .. }), "{f:?}");
    assert!(t0.elapsed() >= Duration::from_millis(1400), "the running request lost its grace period");
    j.join().unwrap();
}

#[test]
fn logprobs_match_the_logits() {
    let (h, _) = start(cap(2, 16, 16, 256), SchedulerConfig { chunked_prefill_size: 4, ..Default::default() });
    let p = prompt(5, 11);
    let mut r = req(&p, 3);
    r.stop.ignore_eos = true;
    r.logprobs = kiln::scheduler::LogprobConfig { enabled: true, start_len: 0, top_n: 2, token_ids: vec![0x61] };
    let mut t = h.submit(r).unwrap();
    let mut outs = vec![];
    loop {
        let o = t.blocking_recv().unwrap();
        let fin = o.finish.is_some();
        outs.push(o);
        if fin {
            break;
        }
    }
    let input = outs[0].input_logprobs.clone().expect("input logprobs with the first output");
    assert_eq!(input.len(), p.len());
    assert_eq!(input[0].logprob, None);
    for (i, e) in input.iter().enumerate().skip(1) {
        let row = logits_for(history_hash(&p[..i]));
        let want = kiln::sampling::logprob_of(&row[..VALID_VOCAB], p[i] as usize);
        assert_eq!(e.id, p[i]);
        assert!((e.logprob.unwrap() - want).abs() < 1e-5);
        assert_eq!(e.top.len(), 2);
    }
    let out: Vec<_> = outs.iter().flat_map(|o| o.logprobs.clone()).collect();
    assert_eq!(out.len(), 3);
    let mut hist = p.clone();
    for e in &out {
        let row = logits_for(history_hash(&hist));
        let want = kiln::sampling::logprob_of(&row[..VALID_VOCAB], e.id as usize);
        assert!((e.logprob.unwrap() - want).abs() < 1e-5);
        assert_eq!(e.top[0].0, e.id);
        assert_eq!(e.ids[0].0, 0x61);
        hist.push(e.id);
    }
}

#[test]
fn parallel_sampling_of_a_large_batch_matches_direct_greedy_and_seeded_draws() {
    let (h, _) = start(cap(32, 512, 16, 256), SchedulerConfig { sample_threads: 4, ..Default::default() });
    let mut greedy = vec![];
    let mut seeded = vec![];
    for i in 0..32u32 {
        let p = prompt(i, 6);
        let mut r = req(&p, 12);
        r.stop.ignore_eos = true;
        greedy.push((p.clone(), h.submit(r).unwrap()));
        let mut r = req(&p, 12);
        r.stop.ignore_eos = true;
        r.sampling = SamplingParams { temperature: 0.9, seed: Some(i as u64), ..Default::default() };
        seeded.push((r.clone(), h.submit(r).unwrap()));
    }
    for (p, t) in greedy {
        assert_eq!(collect(t).0, reference_greedy(&p, 12, false));
    }
    // A seeded request gives the same tokens when it runs alone.
    let first: Vec<_> = seeded.into_iter().map(|(r, t)| (r, collect(t).0)).collect();
    for (r, ids) in first.into_iter().take(4) {
        assert_eq!(collect(h.submit(r).unwrap()).0, ids);
    }
    wait_idle(&h);
}

/// `--schedule-policy`: with a step budget that holds one prefill chunk at a time, short
/// prompts that arrive behind a long one get their prefill first under shortest-prefill
/// and only after the long one's last chunk under fcfs. Both give every request its
/// direct greedy tokens.
#[test]
fn shortest_prefill_runs_short_prompts_before_a_long_one_and_fcfs_does_not() {
    use kiln::scheduler::SchedulePolicy;
    for policy in [SchedulePolicy::ShortestPrefill, SchedulePolicy::Fcfs] {
        // Budget 16 with 4 slots: chunks of up to 12 tokens, so a 12-token chunk of the
        // long prompt leaves no room for an 8-token short one.
        let cfg = SchedulerConfig { chunked_prefill_size: 16, prefix_cache: false, schedule_policy: policy, ..Default::default() };
        let (h, st) = start(cap(4, 64, 16, 256), cfg);
        st.delay_ms.store(10, Relaxed);
        let (long, shorts) = (prompt(1, 120), [prompt(2, 8), prompt(3, 8)]);
        let mut tickets = vec![(long.clone(), h.submit(req(&long, 2)).unwrap())];
        tickets.extend(shorts.iter().map(|p| (p.clone(), h.submit(req(p, 2)).unwrap())));
        for (p, t) in tickets {
            assert_eq!(collect(t).0, reference_greedy(&p, 2, true), "{policy:?}");
        }
        wait_idle(&h);
        let chunks = st.prefill_chunks.lock().unwrap().clone();
        // The long prompt's last chunk ends at 120; the short prompts' chunks are (0, 8).
        let last_long = chunks.iter().position(|&(s, n)| s + n == 120).expect("the long prompt's last chunk");
        let shorts_at: Vec<usize> = chunks.iter().enumerate().filter(|(_, &c)| c == (0, 8)).map(|(i, _)| i).collect();
        assert_eq!(shorts_at.len(), 2, "{policy:?}: {chunks:?}");
        match policy {
            SchedulePolicy::ShortestPrefill => assert!(shorts_at.iter().all(|&i| i < last_long), "{policy:?}: {chunks:?}"),
            SchedulePolicy::Fcfs => assert!(shorts_at.iter().all(|&i| i > last_long), "{policy:?}: {chunks:?}"),
        }
        assert!(st.errors.lock().unwrap().is_empty());
    }
}
