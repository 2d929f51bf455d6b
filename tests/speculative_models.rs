//! Exact speculation on real models (the CPU backend): for the demo model and both tiny HF
//! fixtures, greedy output with MTP speculation equals plain greedy output token for token
//! (64+ tokens, several prompts, mixed batches), through `generate`, the scheduler, the HTTP
//! server and the `kiln` binary; and with forced drafts (oracle: all accepted,
//! adversarial: none accepted).

mod common;

use common::mock::ByteCodec;
use common::server::TestServer;
use kiln::backend::cpu::CpuBackend;
use kiln::backend::forced_draft::{DraftMode, ForcedDraft};
use kiln::backend::{Backend, Capacity};
use kiln::sampling::SamplingParams;
use kiln::scheduler::{self, Codec, GenRequest, SchedulerConfig, SpecConfig, SpecPolicy, StopConfig};
use kiln::server::ServerConfig;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

const NEW: usize = 64;

fn fixture(name: &str) -> (PathBuf, Vec<Vec<u32>>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let prompts = doc["cases"].as_array().unwrap().iter().map(|c| c["prompt_ids"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect()).collect();
    (dir, prompts)
}

fn cpu(dir: Option<&PathBuf>, slots: usize) -> CpuBackend {
    let (cfg, w) = match dir {
        Some(d) => kiln::checkpoint::load(d).unwrap(),
        None => kiln::demo::demo_weights(),
    };
    assert!(w.mtp.is_some(), "the model must carry an MTP head");
    CpuBackend::new(cfg, w, Capacity { slots, block_size: 16, kv_blocks: slots * 24, max_seq_len: 384 }).unwrap()
}

/// Plain and speculative `generate` agree; returns the plain outputs.
fn generate_both(dir: Option<&PathBuf>, prompts: &[Vec<u32>], limit: usize) -> Vec<Vec<u32>> {
    let mut b = cpu(dir, 1);
    prompts
        .iter()
        .map(|p| {
            let plain = kiln::generate::greedy(&mut b, p, NEW, &[], limit).unwrap();
            let (spec, counts) = kiln::generate::greedy_speculative(&mut b, p, NEW, &[], limit, 3).unwrap();
            assert_eq!(spec, plain, "speculative output differs from plain ({} tokens of prompt)", p.len());
            assert_eq!(plain.len(), NEW);
            assert!(counts.verify_ct > 0 && counts.verify_tokens == NEW as u64 - 1, "{counts:?}");
            plain
        })
        .collect()
}

#[test]
fn fixtures_speculative_generate_equals_plain() {
    for name in ["tiny_text", "tiny_official"] {
        let (dir, prompts) = fixture(name);
        let plain = generate_both(Some(&dir), &prompts, 1024);
        // Sanity: the plain output starts with HF's greedy ids.
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
        for (c, out) in doc["cases"].as_array().unwrap().iter().zip(&plain) {
            let hf: Vec<u32> = c["greedy_ids"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
            assert_eq!(&out[..hf.len()], &hf[..], "{name} {}", c["name"]);
        }
    }
}

#[test]
fn forced_drafts_give_plain_output_with_full_and_no_acceptance() {
    let (dir, prompts) = fixture("tiny_text");
    let prompts = &prompts[..2];
    let plain = generate_both(Some(&dir), prompts, 1024);
    let known: Vec<Vec<u32>> = prompts.iter().zip(&plain).map(|(p, o)| p.iter().chain(o).copied().collect()).collect();
    for mode in [DraftMode::Oracle, DraftMode::Adversarial] {
        let mut b = ForcedDraft::new(Box::new(cpu(Some(&dir), 1)), mode, known.clone());
        for (p, want) in prompts.iter().zip(&plain) {
            let (got, c) = kiln::generate::greedy_speculative(&mut b, p, NEW, &[], 1024, 3).unwrap();
            assert_eq!(&got, want, "{mode:?}");
            match mode {
                // 63 tokens after the first: 15 full cycles of 4 and a last one of 3.
                DraftMode::Oracle => assert_eq!((c.verify_ct, c.accepted_drafts, c.draft_tokens), (16, 47, 47), "{c:?}"),
                DraftMode::Adversarial => assert_eq!((c.verify_ct, c.accepted_drafts), (63, 0), "{c:?}"),
            }
        }
    }
}

fn spec_cfg(policy: SpecPolicy) -> SchedulerConfig {
    SchedulerConfig { speculative: Some(SpecConfig { num_steps: 3, policy, draft_vocab: None }), ..Default::default() }
}

fn greedy_req(rid: usize, prompt: &[u32], max_new: usize) -> GenRequest {
    let stop = StopConfig { max_new_tokens: max_new, ignore_eos: true, ..Default::default() };
    GenRequest::new(format!("r{rid}"), prompt.to_vec(), SamplingParams::greedy(), stop)
}

/// Submits all requests at once; returns each one's ids and its verify count.
fn run(backend: Box<dyn Backend>, codec: Arc<dyn Codec>, cfg: SchedulerConfig, reqs: &[GenRequest]) -> Vec<(Vec<u32>, u64)> {
    let h = scheduler::spawn(backend, codec, cfg).unwrap();
    let tickets: Vec<_> = reqs.iter().map(|r| h.submit(r.clone()).unwrap()).collect();
    tickets
        .into_iter()
        .map(|mut t| {
            let mut ids = vec![];
            loop {
                let o = t.blocking_recv().unwrap();
                ids.extend(o.ids);
                if o.finish.is_some() {
                    assert!(!matches!(o.finish, Some(kiln::scheduler::FinishReason::Abort { .. })), "{:?}", o.finish);
                    return (ids, o.spec.map_or(0, |s| s.verify_ct));
                }
            }
        })
        .collect()
}

#[test]
fn scheduler_mixed_batches_on_the_fixtures_equal_plain() {
    for name in ["tiny_text", "tiny_official"] {
        let (dir, prompts) = fixture(name);
        // Four greedy prompts of different lengths (prefill chunks beside verify rows), one
        // sampled request and one with logprobs that run plainly in the same steps.
        let mut reqs: Vec<GenRequest> = prompts.iter().enumerate().map(|(i, p)| greedy_req(i, &p[..p.len().min(90)], NEW + 4 * i)).collect();
        let mut sampled = greedy_req(10, &prompts[0], 20);
        sampled.sampling = SamplingParams { temperature: 0.7, seed: Some(3), ..SamplingParams::default() };
        let mut lp = greedy_req(11, &prompts[1], 20);
        lp.logprobs.enabled = true;
        reqs.push(sampled);
        reqs.push(lp);
        let codec: Arc<dyn Codec> = Arc::new(FixtureCodec);
        let cfg = SchedulerConfig { chunked_prefill_size: 48, ..Default::default() };
        let plain = run(Box::new(cpu(Some(&dir), 8)), codec.clone(), cfg.clone(), &reqs);
        let spec = run(Box::new(cpu(Some(&dir), 8)), codec, SchedulerConfig { chunked_prefill_size: 48, ..spec_cfg(SpecPolicy::Always) }, &reqs);
        for (i, (p, s)) in plain.iter().zip(&spec).enumerate() {
            assert_eq!(s.0, p.0, "{name}: request {i} differs with speculation");
        }
        assert!(spec[..4].iter().all(|s| s.1 > 0), "{name}: greedy requests speculated: {:?}", spec.iter().map(|s| s.1).collect::<Vec<_>>());
        assert_eq!((spec[4].1, spec[5].1), (0, 0), "{name}: sampled and logprob requests decode plainly");
    }
}

/// The byte codec over the fixtures' 1024-id vocabulary (ids are what the tests compare).
struct FixtureCodec;

impl Codec for FixtureCodec {
    fn encode(&self, text: &str, add_special_tokens: bool) -> anyhow::Result<Vec<u32>> {
        ByteCodec.encode(text, add_special_tokens)
    }
    fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> anyhow::Result<String> {
        ByteCodec.decode(ids, skip_special_tokens)
    }
    fn vocab_size(&self) -> usize {
        1024
    }
    fn eos_token_ids(&self) -> Vec<u32> {
        vec![]
    }
    fn render_chat(&self, m: &Value, t: Option<&Value>, k: &serde_json::Map<String, Value>) -> anyhow::Result<String> {
        ByteCodec.render_chat(m, t, k)
    }
}

fn demo_prompts(tok: &kiln::tokenizer::Tokenizer) -> Vec<Vec<u32>> {
    ["Hello there, how are", "1 2 3 4", "The capital of France is"].iter().map(|p| tok.encode(p, true).unwrap()).collect()
}

#[test]
fn demo_model_over_http_equals_plain_generate() {
    let tok = kiln::tokenizer::Tokenizer::bundled().unwrap();
    let limit = tok.vocab_size();
    // Two prompts (the demo's 248K-row lm_head makes every token cost ~40 ms here).
    let prompts = &demo_prompts(&tok)[1..];
    let mut b = cpu(None, 1);
    let want: Vec<Vec<u32>> = prompts.iter().map(|p| kiln::generate::greedy(&mut b, p, NEW, &[], limit).unwrap()).collect();
    let server = TestServer::start(Box::new(cpu(None, 4)), Arc::new(tok), spec_cfg(SpecPolicy::Always), ServerConfig::default());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        // All prompts in one batch request (a mixed batch in the scheduler).
        let body = json!({"input_ids": prompts, "sampling_params": {"temperature": 0, "max_new_tokens": NEW, "ignore_eos": true}});
        let got = server.post_json("/generate", &body, 200).await;
        let mut accepted = 0.0;
        for (i, w) in want.iter().enumerate() {
            let ids: Vec<u32> = serde_json::from_value(got[i]["output_ids"].clone()).unwrap();
            assert_eq!(&ids, w, "prompt {i}");
            let m = &got[i]["meta_info"];
            assert!(m["spec_verify_ct"].as_u64().unwrap() > 0, "{m}");
            accepted += m["spec_accept_token_num"].as_f64().unwrap();
        }
        assert!(accepted > 0.0, "the demo MTP head's drafts are sometimes accepted");
        let info: Value = server.get("/get_server_info").await.json().await.unwrap();
        assert!(info["internal_states"][0]["avg_spec_accept_length"].as_f64().unwrap() > 1.0);
        server.wait_idle().await;
    });
}

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

fn kiln_generate(prompt: &str, spec: bool) -> String {
    let mut cmd = Command::new(KILN);
    cmd.args(["generate", "--prompt", prompt, "--max-new-tokens", &NEW.to_string()]);
    if spec {
        cmd.args(["--speculative-algorithm", "NEXTN", "--speculative-num-steps", "3"]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    if spec {
        assert!(String::from_utf8_lossy(&out.stderr).contains("verify passes"));
    }
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn kiln_generate_speculative_prints_the_plain_text() {
    // One prompt: each run decodes 64 tokens over the demo's 248K-row lm_head.
    let p = "The capital of France is";
    assert_eq!(kiln_generate(p, true), kiln_generate(p, false), "prompt {p:?}");
}

#[test]
fn kiln_flags_are_checked() {
    let out = Command::new(KILN)
        .args(["generate", "--prompt", "a", "--speculative-algorithm", "NEXTN", "--speculative-eagle-topk", "4"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--speculative-eagle-topk 4 is not supported"), "{err}");
    let out = Command::new(KILN)
        .args(["serve", "--port", "0", "--speculative-algorithm", "NEXTN", "--speculative-num-steps", "2", "--speculative-num-draft-tokens", "4"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--speculative-num-draft-tokens 4 is not supported") && err.contains("= 3"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_server_with_sglang_speculative_flags_serves_plain_greedy_output() {
    use std::io::{BufRead, BufReader};
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/launch_server.sh");
    let mut child = Command::new("bash")
        .arg(script)
        .args(["--port", "0", "--speculative-algorithm", "NEXTN", "--speculative-num-steps", "2"])
        .args(["--speculative-eagle-topk", "1", "--speculative-num-draft-tokens", "3", "--speculative-policy", "always"])
        .env("KILN_BIN", KILN)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    for r in [Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>, Box::new(child.stderr.take().unwrap())] {
        let tx = tx.clone();
        std::thread::spawn(move || BufReader::new(r).lines().map_while(Result::ok).for_each(|l| drop(tx.send(l))));
    }
    let mut log = vec![];
    let base = loop {
        let l = rx.recv_timeout(std::time::Duration::from_secs(60)).unwrap_or_else(|_| panic!("server not ready: {log:#?}"));
        log.push(l.clone());
        if let Some(addr) = l.split("Listening on ").nth(1) {
            break addr.trim().to_string();
        }
    };
    assert!(log.iter().any(|l| l.contains("speculative decoding: MTP, 2 draft steps")), "{log:#?}");
    let tok = kiln::tokenizer::Tokenizer::bundled().unwrap();
    let prompt = tok.encode("1 2 3 4", true).unwrap();
    let mut b = cpu(None, 1);
    let want = kiln::generate::greedy(&mut b, &prompt, 12, &[], tok.vocab_size()).unwrap();
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let body = json!({"input_ids": prompt, "sampling_params": {"temperature": 0, "max_new_tokens": 12, "ignore_eos": true}});
    let r: Value = c.post(format!("{base}/generate")).json(&body).send().await.unwrap().json().await.unwrap();
    let info: Value = c.get(format!("{base}/get_server_info")).send().await.unwrap().json().await.unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let ids: Vec<u32> = serde_json::from_value(r["output_ids"].clone()).unwrap();
    assert_eq!(ids, want);
    assert!(r["meta_info"]["spec_verify_ct"].as_u64().unwrap() > 0, "{r}");
    // The flags appear in server_info flat, as SGLang lists its server args.
    assert_eq!(info["speculative_algorithm"], "NEXTN", "{info}");
    assert_eq!(info["speculative_num_steps"], 2, "{info}");
    assert!(info["internal_states"][0]["avg_spec_accept_length"].as_f64().unwrap() >= 1.0, "{info}");
}

/// `--speculative-algorithm auto` runs the start-up trial only on the cuda backend: the demo
/// model (CPU) starts without speculation and says why in /get_server_info.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_speculation_on_the_cpu_backend_starts_plain_and_says_why() {
    let mut cmd = Command::new(KILN);
    cmd.args(["serve", "--port", "0", "--speculative-algorithm", "auto"]);
    let mut server = common::proc::Proc::spawn(cmd);
    let base = server.wait_ready();
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let info: Value = c.get(format!("{base}/get_server_info")).send().await.unwrap().json().await.unwrap();
    let body = json!({"input_ids": [1, 2, 3], "sampling_params": {"temperature": 0, "max_new_tokens": 4, "ignore_eos": true}});
    let r: Value = c.post(format!("{base}/generate")).json(&body).send().await.unwrap().json().await.unwrap();
    server.sigterm();
    server.wait_exit(std::time::Duration::from_secs(30));
    let log = &server.log;
    assert!(info["speculative_algorithm"].is_null(), "{info}");
    assert!(info["speculative_auto"].as_str().unwrap().starts_with("off: the trial runs on the cuda backend only"), "{info}");
    assert!(log.iter().any(|l| l.contains("speculative decoding (auto) off")), "{log:#?}");
    assert!(!log.iter().any(|l| l.contains("speculative decoding: MTP")), "{log:#?}");
    assert_eq!(r["meta_info"]["completion_tokens"], 4, "{r}");
    assert!(r["meta_info"].get("spec_verify_ct").is_none_or(|v| v.is_null() || v == 0), "{r}");
}

/// Submits the requests one after the other (each after the previous finished); returns
/// each one's ids, verify count and the prompt tokens it took from the prefix cache.
fn run_one_by_one(backend: Box<dyn Backend>, cfg: SchedulerConfig, reqs: &[GenRequest]) -> Vec<(Vec<u32>, u64, usize)> {
    let h = scheduler::spawn(backend, Arc::new(FixtureCodec), cfg).unwrap();
    reqs.iter()
        .map(|r| {
            let mut t = h.submit(r.clone()).unwrap();
            let (mut ids, mut cached) = (vec![], 0);
            loop {
                let o = t.blocking_recv().unwrap();
                ids.extend(o.ids);
                cached = cached.max(o.cached_tokens);
                if o.finish.is_some() {
                    assert!(!matches!(o.finish, Some(kiln::scheduler::FinishReason::Abort { .. })), "{:?}", o.finish);
                    return (ids, o.spec.map_or(0, |s| s.verify_ct), cached);
                }
            }
        })
        .collect()
}

#[test]
fn speculation_resumed_from_the_prefix_cache_equals_plain() {
    let (dir, prompts) = fixture("tiny_text");
    // A 100-token prompt, then one sharing its first 80 tokens: with cuts at 32 and 64 the
    // second resumes from the snapshot at 64, MTP cache included, and must still speculate
    // to exactly the plain tokens.
    let long: Vec<u32> = prompts.iter().flatten().copied().cycle().take(100).collect();
    let follow: Vec<u32> = long[..80].iter().chain(prompts[1].iter()).copied().take(110).collect();
    let reqs = [greedy_req(0, &long, 40), greedy_req(1, &follow, 40), greedy_req(2, &long, 40)];
    let base = SchedulerConfig { chunked_prefill_size: 64, prefix_cache_interval: 32, ..Default::default() };
    let plain = run_one_by_one(Box::new(cpu(Some(&dir), 2)), SchedulerConfig { prefix_cache: false, ..base.clone() }, &reqs);
    let spec_cfg = SchedulerConfig { speculative: Some(SpecConfig { num_steps: 3, policy: SpecPolicy::Always, draft_vocab: None }), ..base };
    let spec = run_one_by_one(Box::new(cpu(Some(&dir), 2)), spec_cfg, &reqs);
    for (i, (p, s)) in plain.iter().zip(&spec).enumerate() {
        assert_eq!(s.0, p.0, "request {i}: speculation after a cache hit differs from plain decoding");
        assert!(s.1 > 0, "request {i} did not speculate");
        assert_eq!(p.2, 0, "the plain run has no cache");
    }
    assert_eq!(spec[0].2, 0, "the first request finds an empty cache");
    assert!(spec[1].2 >= 64 && spec[2].2 >= 64, "later requests resume from the cache: {:?}", spec.iter().map(|s| s.2).collect::<Vec<_>>());
}

/// A CPU backend with the cuda backend's verify limit (`cap` sequences), which records the
/// largest verify and draft vocabulary limit it was given, and whose draft can be made to
/// fail from its `fail_draft_from`-th call on.
struct Probe {
    inner: CpuBackend,
    cap: usize,
    largest: Arc<std::sync::atomic::AtomicUsize>,
    draft_limit: Arc<std::sync::atomic::AtomicUsize>,
    fail_draft_from: Option<usize>,
    drafts: usize,
}

impl Probe {
    fn new(inner: CpuBackend, cap: usize) -> Self {
        Probe { inner, cap, largest: Default::default(), draft_limit: Default::default(), fail_draft_from: None, drafts: 0 }
    }
}

/// Runs `n` greedy requests of `new` tokens on the tiny fixture plainly and through `probe`
/// with speculation (`cfg`); every output must equal plain greedy's. Returns each
/// speculative request's verify count.
fn plain_and_probe(n: usize, new: usize, probe: impl FnOnce(CpuBackend) -> Probe, cfg: SchedulerConfig) -> Vec<u64> {
    let (dir, prompts) = fixture("tiny_text");
    let reqs: Vec<GenRequest> = (0..n).map(|i| greedy_req(i, &prompts[i % prompts.len()], new)).collect();
    let codec: Arc<dyn Codec> = Arc::new(FixtureCodec);
    let plain = run(Box::new(cpu(Some(&dir), n)), codec.clone(), SchedulerConfig::default(), &reqs);
    let spec = run(Box::new(probe(cpu(Some(&dir), n))), codec, cfg, &reqs);
    for (i, (p, s)) in plain.iter().zip(&spec).enumerate() {
        assert_eq!(s.0, p.0, "request {i} differs with speculation");
    }
    spec.iter().map(|s| s.1).collect()
}

impl Backend for Probe {
    fn name(&self) -> &'static str {
        "probe"
    }
    fn config(&self) -> &kiln::config::ModelConfig {
        self.inner.config()
    }
    fn capacity(&self) -> Capacity {
        self.inner.capacity()
    }
    fn forward(&mut self, chunks: &[kiln::backend::SeqChunk<'_>]) -> anyhow::Result<Vec<kiln::backend::ChunkLogits>> {
        self.inner.forward(chunks)
    }
    fn reset_slot(&mut self, slot: usize) -> anyhow::Result<()> {
        self.inner.reset_slot(slot)
    }
    fn supports_speculation(&self) -> bool {
        true
    }
    fn max_verify_rows(&self) -> usize {
        self.cap
    }
    fn draft(&mut self, seqs: &[kiln::backend::DraftChunk<'_>]) -> anyhow::Result<Vec<Vec<u32>>> {
        self.drafts += 1;
        anyhow::ensure!(self.fail_draft_from.is_none_or(|n| self.drafts < n), "a device fault in the MTP head (test)");
        for c in seqs {
            self.draft_limit.fetch_max(c.limit, std::sync::atomic::Ordering::Relaxed);
        }
        self.inner.draft(seqs)
    }
    fn verify(&mut self, seqs: &[kiln::backend::VerifyChunk<'_>]) -> anyhow::Result<Vec<kiln::backend::Verified>> {
        anyhow::ensure!(seqs.len() <= self.cap, "{} sequences in one verify, over the cap of {}", seqs.len(), self.cap);
        assert!(self.fail_draft_from.is_none_or(|n| self.drafts < n), "no verify after a failed draft");
        self.largest.fetch_max(seqs.len(), std::sync::atomic::Ordering::Relaxed);
        self.inner.verify(seqs)
    }
}

#[test]
fn the_scheduler_verifies_no_more_sequences_than_the_backend_takes() {
    // Four greedy requests at once against a verify that takes two: two speculate each
    // step, the others decode plainly beside them, and every output equals plain greedy.
    let largest = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let verifies = plain_and_probe(4, 40, |be| Probe { largest: largest.clone(), ..Probe::new(be, 2) }, spec_cfg(SpecPolicy::Always));
    assert_eq!(largest.load(std::sync::atomic::Ordering::Relaxed), 2, "verify calls used the cap");
    assert!(verifies.iter().all(|&v| v > 0), "every request speculated at some step: {verifies:?}");
}

#[test]
fn a_draft_vocabulary_prefix_keeps_the_output_exact() {
    // --speculative-draft-vocab 16: drafts are argmaxes over ids below 16 only (most are
    // then rejected on this fixture), and the output is still plain greedy's.
    let draft_limit = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut cfg = spec_cfg(SpecPolicy::Always);
    cfg.speculative.as_mut().unwrap().draft_vocab = Some(16);
    plain_and_probe(2, 30, |be| Probe { draft_limit: draft_limit.clone(), ..Probe::new(be, 8) }, cfg);
    assert_eq!(draft_limit.load(std::sync::atomic::Ordering::Relaxed), 16, "drafts were limited to the first 16 ids");
}

#[test]
fn a_failed_draft_turns_speculation_off_and_loses_nothing() {
    // The third draft fails: speculation stops for good, nobody's request fails (`run`
    // refuses an abort), and every output is still plain greedy's.
    // The first request is in both good drafts; the second may have been admitted a step
    // later (it is submitted after the scheduler starts), so it has one or two.
    let verifies = plain_and_probe(2, 30, |be| Probe { fail_draft_from: Some(3), ..Probe::new(be, 8) }, spec_cfg(SpecPolicy::Always));
    assert_eq!(verifies[0], 2, "the first request verified in both drafts before the failure: {verifies:?}");
    assert!(verifies.iter().all(|&v| v <= 2), "no verified cycle after the failed draft: {verifies:?}");
}
