//! What structured output costs on the CPU with the real Qwen3.5 tokenizer (248k ids):
//! building the grammar engine, compiling a schema, and per constrained token the mask
//! (llguidance) plus applying it to a logits row and advancing the matcher.
//! A measurement, not a test: `cargo test --release --test grammar_cost -- --ignored --nocapture`.

use kiln::sampling::grammar::{GrammarEngine, GrammarSpec};
use kiln::sampling::{LogprobWant, Sampler, SamplingParams};
use kiln::tokenizer::Tokenizer;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::time::Instant;

#[test]
#[ignore = "a measurement; run with --ignored --nocapture"]
fn constrained_token_cost_with_the_real_tokenizer() {
    let tok = Tokenizer::bundled().unwrap();
    let vocab = tok.vocab_size();
    let t0 = Instant::now();
    let bytes = tok.token_bytes().unwrap();
    let t_bytes = t0.elapsed();
    let enc = tok.clone();
    let engine = GrammarEngine::new(bytes, tok.eos_token_ids()[0], Box::new(move |s: &str| enc.encode(s, false).unwrap_or_default())).unwrap();
    let t_engine = t0.elapsed();
    let schema = json!({"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 40}, "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 8},
        "address": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}, "zip": {"type": "string", "pattern": "[0-9]{5}"}},
                    "required": ["city", "zip"]}},
        "required": ["name", "age", "tags", "address"]});
    let t1 = Instant::now();
    let grammar = engine.compile(&GrammarSpec::JsonSchema(schema)).unwrap();
    let t_compile = t1.elapsed();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
    let row: Vec<f32> = (0..vocab).map(|_| rng.gen_range(0.0..8.0)).collect();
    let (mut constrained, mut plain, mut tokens) = (0.0f64, 0.0f64, 0usize);
    for seed in 0..5 {
        let mut with = Sampler::new(SamplingParams { seed: Some(seed), grammar: Some(grammar.clone()), ..Default::default() });
        let mut without = Sampler::new(SamplingParams { seed: Some(seed), ..Default::default() });
        for _ in 0..400 {
            let t = Instant::now();
            let tok_id = with.sample(&row, vocab, &[], &LogprobWant::default()).token;
            with.observe(tok_id);
            constrained += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let other = without.sample(&row, vocab, &[], &LogprobWant::default()).token;
            without.observe(other);
            plain += t.elapsed().as_secs_f64();
            tokens += 1;
            if tok.eos_token_ids().contains(&tok_id) {
                break;
            }
        }
    }
    println!("token bytes from tokenizer.json: {:.0} ms; grammar engine (trie) total: {:.0} ms", t_bytes.as_secs_f64() * 1e3, t_engine.as_secs_f64() * 1e3);
    println!("schema compile: {:.2} ms", t_compile.as_secs_f64() * 1e3);
    println!(
        "per token over {tokens} tokens: constrained sample {:.1} us, unconstrained sample {:.1} us (grammar cost {:.1} us)",
        constrained / tokens as f64 * 1e6,
        plain / tokens as f64 * 1e6,
        (constrained - plain) / tokens as f64 * 1e6
    );
}
