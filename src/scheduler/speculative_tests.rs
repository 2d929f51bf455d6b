//! The speculation policy: flag resolution, the cost model and the counters.

use super::*;

#[test]
fn flags_resolve_as_sglang_names_them() {
    let a = SpecPolicy::Auto;
    assert_eq!(resolve(None, None, None, None, a), Ok(None));
    assert_eq!(resolve(Some("none"), Some(5), None, None, a), Ok(None));
    let three = Ok(Some(SpecConfig { num_steps: 3, policy: a, draft_vocab: None }));
    assert_eq!(resolve(Some("NEXTN"), None, None, None, a), three.clone());
    assert_eq!(resolve(Some("EAGLE"), Some(3), Some(1), Some(4), a), three.clone());
    assert_eq!(resolve(Some("nextn"), Some(2), None, None, SpecPolicy::Always).unwrap().unwrap().num_steps, 2);
    let e = resolve(Some("EAGLE3"), None, None, None, a).unwrap_err();
    assert!(e.contains("--speculative-algorithm EAGLE3") && e.contains("NEXTN"), "{e}");
    let e = resolve(Some("NEXTN"), None, Some(4), None, a).unwrap_err();
    assert!(e.contains("--speculative-eagle-topk 4") && e.contains("use 1"), "{e}");
    let e = resolve(Some("NEXTN"), Some(3), Some(1), Some(8), a).unwrap_err();
    assert!(e.contains("--speculative-num-draft-tokens 8") && e.contains("= 4"), "{e}");
    let e = resolve(Some("NEXTN"), Some(0), None, None, a).unwrap_err();
    assert!(e.contains("--speculative-num-steps 0") && e.contains("between 1 and 16"), "{e}");
}

#[test]
fn a_cycle_pays_when_its_cost_per_token_beats_a_plain_step() {
    // A cycle costs 3.3, worth 2.0 per accepted token.
    let c = StepCosts { plain: 2.0, cycle: 3.3 };
    assert!(speculation_pays(&c, 2.8));
    assert!(!speculation_pays(&c, 1.6));
    assert!(!speculation_pays(&c, 1.65)); // exactly break-even: plain wins
    assert!(speculation_pays(&c, 1.66));
    // Nothing accepted (random weights): never pays.
    assert!(!speculation_pays(&c, 1.0));
}

#[test]
fn the_decision_uses_measured_costs_by_batch_and_assumes_before_measuring() {
    let mut t = CostTable::default();
    // Nothing measured: the assumed ratios (verify 1.3, a draft step 0.2 plain steps)
    // make speculation worth trying.
    assert_eq!(t.at(8, 3), StepCosts { plain: 1.0, cycle: 1.3 + 0.2 * 3.0 });
    assert!(should_speculate(8, &t, 3, 2.5));
    assert!(!should_speculate(0, &t, 3, 2.5));
    // Small batches: a cycle costs about 1.5 plain steps. Large ones: 3.7.
    t.observe_plain(1, 2.0e-3);
    t.observe_cycle(1, 3, 3, 3.1e-3);
    t.observe_plain(64, 6.5e-3);
    t.observe_cycle(64, 3, 3, 24.0e-3);
    assert!(should_speculate(1, &t, 3, 2.5));
    assert!(!should_speculate(64, &t, 3, 2.5));
    // Batch 48 rounds to the 64 bucket; batch 3 (bucket 4) uses the nearest measured bucket (1).
    assert!(!should_speculate(48, &t, 3, 2.5));
    assert!(should_speculate(3, &t, 3, 2.5));
    // Only plain measured at a bucket: the cycle is assumed relative to it.
    let mut u = CostTable::default();
    u.observe_plain(16, 4.0);
    assert_eq!(u.at(16, 3), StepCosts { plain: 4.0, cycle: (1.3 + 0.2 * 3.0) * 4.0 });
    // Bad measurements are ignored.
    u.observe_cycle(16, 3, 3, f64::NAN);
    assert_eq!(u.at(16, 3).cycle, (1.3 + 0.2 * 3.0) * 4.0);
    // A cycle of fewer drafts than configured counts as the configured cycle's share:
    // 1 of 3 steps assumed 1.5 of 1.9 plain steps.
    let mut w = CostTable::default();
    w.observe_cycle(1, 1, 3, 1.5);
    assert!((w.at(1, 3).cycle - 1.9).abs() < 1e-12);
}

#[test]
fn the_runtime_follows_acceptance_and_probes_while_off() {
    let mut r = SpecRuntime::new(SpecConfig { num_steps: 3, policy: SpecPolicy::Auto, draft_vocab: None });
    assert!(r.decide(1), "speculation starts on");
    // Measured: nothing is ever accepted (random weights), verify costs more than a step.
    r.costs.observe_plain(1, 1.0);
    r.costs.observe_cycle(1, 3, 3, 1.8);
    for _ in 0..40 {
        r.observe_acceptance(&[1, 1]);
    }
    assert!(r.expected_accept_len < 1.1);
    let decisions: Vec<bool> = (0..2 * PROBE_INTERVAL).map(|_| r.decide(1)).collect();
    let probes: Vec<usize> = decisions.iter().enumerate().filter(|d| *d.1).map(|d| d.0).collect();
    assert_eq!(probes, vec![PROBE_INTERVAL - 1, 2 * PROBE_INTERVAL - 1], "one probe per interval");
    // Acceptance rises (real weights): speculation comes back.
    for _ in 0..40 {
        r.observe_acceptance(&[4, 3]);
    }
    assert!(r.decide(1));
    // Always speculates whenever there is a batch.
    let mut always = SpecRuntime::new(SpecConfig { num_steps: 3, policy: SpecPolicy::Always, draft_vocab: None });
    always.costs = r.costs.clone();
    always.observe_acceptance(&[1]);
    assert!(always.decide(3) && !always.decide(0));
}

#[test]
fn counters_report_sglang_fields() {
    let mut c = SpecCounts::default();
    assert_eq!((c.accept_length(), c.accept_rate()), (0.0, 0.0));
    c.record(3, 4);
    c.record(3, 1);
    c.record(2, 2);
    assert_eq!(c, SpecCounts { verify_ct: 3, verify_tokens: 7, accepted_drafts: 4, draft_tokens: 8 });
    assert!((c.accept_length() - 7.0 / 3.0).abs() < 1e-12);
    assert!((c.accept_rate() - 0.5).abs() < 1e-12);
}
