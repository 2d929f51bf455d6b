//! Grammar-constrained sampling over a small byte-level vocabulary with random logits:
//! whatever the logits, the output follows the grammar (a table of schemas, a regex, an
//! EBNF grammar), ends with EOS, and bad grammars are refused at compile time.

use super::*;
use crate::sampling::{LogprobWant, Sampler, SamplingParams};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde_json::{json, Value};

const EOS: u32 = 256;
/// Single bytes, EOS, and a few multi-byte tokens so the trie has real branching.
const MULTI: &[&str] = &["\"name\"", "true", ", ", "\": ", "null", "{\"", "abc"];
const VOCAB: usize = 257 + MULTI.len();

fn engine() -> GrammarEngine {
    let mut bytes: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    bytes.push(b"\xff<eos>".to_vec());
    bytes.extend(MULTI.iter().map(|m| m.as_bytes().to_vec()));
    GrammarEngine::new(bytes, EOS, Box::new(|s: &str| s.bytes().map(u32::from).collect())).unwrap()
}

fn token_text(id: u32) -> Vec<u8> {
    match id {
        0..=255 => vec![id as u8],
        EOS => vec![],
        _ => MULTI[id as usize - 257].as_bytes().to_vec(),
    }
}

/// Samples under `grammar` from random logits (plus `bias` on some bytes) until EOS;
/// panics if EOS never comes.
fn generate(grammar: &Grammar, seed: u64, temperature: f32, bias: &[(u8, f32)]) -> String {
    let params = SamplingParams { temperature, seed: Some(seed), grammar: Some(grammar.clone()), ..Default::default() };
    let mut sampler = Sampler::new(params);
    let mut logits_rng = ChaCha20Rng::seed_from_u64(seed ^ 0x5eed);
    let mut out = vec![];
    for _ in 0..600 {
        let mut logits: Vec<f32> = (0..VOCAB).map(|_| logits_rng.gen_range(0.0..4.0)).collect();
        for &(b, x) in bias {
            logits[b as usize] += x;
        }
        let tok = sampler.sample(&logits, VOCAB, &[], &LogprobWant::default()).token;
        sampler.observe(tok);
        if tok == EOS {
            return String::from_utf8(out).expect("constrained output is UTF-8");
        }
        out.extend(token_text(tok));
    }
    panic!("no EOS after 600 tokens: {:?}", String::from_utf8_lossy(&out));
}

type Check = fn(&str);

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
}

const PERSON: fn() -> Value = || {
    json!({"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "ok": {"type": "boolean"},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3}},
        "required": ["name", "age", "ok", "tags"], "additionalProperties": false})
};

/// (name, grammar, check, bias). A grammar with unbounded strings or nesting (any JSON
/// object) only ends under random logits if closing characters are likely.
type Case = (&'static str, GrammarSpec, Check, &'static [(u8, f32)]);

fn cases() -> Vec<Case> {
    const CLOSERS: &[(u8, f32)] = &[(b'}', 5.0), (b'"', 5.0), (b']', 5.0), (b'1', 4.0)];
    vec![
        ("json_object", GrammarSpec::JsonObject, |t| assert!(json_of(t).is_object(), "{t}"), CLOSERS),
        ("person schema", GrammarSpec::JsonSchema(PERSON()), |t| {
            let v = json_of(t);
            let o = v.as_object().unwrap();
            assert_eq!(o.len(), 4, "{t}");
            assert!(o["name"].as_str().unwrap().chars().count() <= 8, "{t}");
            assert!((0..=150).contains(&o["age"].as_i64().unwrap()), "{t}");
            assert!(o["ok"].is_boolean(), "{t}");
            let tags = o["tags"].as_array().unwrap();
            assert!(tags.len() <= 3 && tags.iter().all(|x| x == "a" || x == "b"), "{t}");
        }, &[]),
        (
            "nested, nullable and enum",
            GrammarSpec::JsonSchema(json!({"type": "object", "properties": {
                "inner": {"type": "object", "properties": {"x": {"anyOf": [{"type": "integer", "minimum": -5, "maximum": 5}, {"type": "null"}]}},
                          "required": ["x"], "additionalProperties": false},
                "mode": {"enum": ["fast", "slow", 3]}},
                "required": ["inner", "mode"], "additionalProperties": false})),
            |t| {
                let v = json_of(t);
                let x = &v["inner"]["x"];
                assert!(x.is_null() || (-5..=5).contains(&x.as_i64().unwrap()), "{t}");
                assert!([json!("fast"), json!("slow"), json!(3)].contains(&v["mode"]), "{t}");
            },
            &[],
        ),
        ("top-level array", GrammarSpec::JsonSchema(json!({"type": "array", "items": {"type": "boolean"}, "minItems": 1, "maxItems": 4})), |t| {
            let v = json_of(t);
            let a = v.as_array().unwrap();
            assert!((1..=4).contains(&a.len()) && a.iter().all(Value::is_boolean), "{t}");
        }, &[]),
        ("regex", GrammarSpec::Regex("[0-9]{3}-[a-z]{2,4}".into()), |t| {
            let (digits, letters) = t.split_once('-').unwrap_or_else(|| panic!("{t:?}"));
            assert!(digits.len() == 3 && digits.bytes().all(|b| b.is_ascii_digit()), "{t:?}");
            assert!((2..=4).contains(&letters.len()) && letters.bytes().all(|b| b.is_ascii_lowercase()), "{t:?}");
        }, &[]),
        (
            "ebnf",
            GrammarSpec::Lark(ebnf_to_lark("# yes or no, then two digits\nroot ::= answer \" \" digit-pair\nanswer ::= \"yes\" | \"no\"\ndigit-pair ::= [0-9] [0-9]")),
            |t| {
                let (a, d) = t.split_once(' ').unwrap_or_else(|| panic!("{t:?}"));
                assert!(a == "yes" || a == "no", "{t:?}");
                assert!(d.len() == 2 && d.bytes().all(|b| b.is_ascii_digit()), "{t:?}");
            },
            &[],
        ),
    ]
}

#[test]
fn constrained_output_follows_every_grammar_whatever_the_logits() {
    let engine = engine();
    for (name, spec, check, bias) in cases() {
        let grammar = engine.compile(&spec).unwrap_or_else(|e| panic!("{name}: {e}"));
        for seed in 0..8 {
            for temperature in [0.0, 1.0] {
                let text = generate(&grammar, seed, temperature, bias);
                check(&text);
            }
        }
    }
}

#[test]
fn without_the_grammar_the_same_logits_break_it() {
    // the check above must be able to fail: unconstrained, random logits give no JSON
    let mut sampler = Sampler::new(SamplingParams { seed: Some(1), ..Default::default() });
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let text: Vec<u8> = (0..40)
        .flat_map(|_| {
            let logits: Vec<f32> = (0..VOCAB).map(|_| rng.gen_range(0.0..4.0)).collect();
            token_text(sampler.sample(&logits, VOCAB, &[], &LogprobWant::default()).token)
        })
        .collect();
    assert!(serde_json::from_slice::<Value>(&text).is_err());
}

#[test]
fn bad_grammars_are_refused_with_a_reason() {
    let engine = engine();
    for spec in [
        GrammarSpec::Regex("(unclosed".into()),
        GrammarSpec::Lark("start: missing_rule".into()),
        GrammarSpec::JsonSchema(json!({"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}})),
    ] {
        let err = engine.compile(&spec).err().unwrap_or_else(|| panic!("{spec:?} compiled"));
        assert!(!err.is_empty());
    }
}

#[test]
fn ebnf_rules_become_lark_rules() {
    assert_eq!(ebnf_to_lark("root ::= a-b \"x-y\" [a-z]\na-b ::= \"q\""), "start: root\nroot: a_b \"x-y\" /[a-z]/\na_b: \"q\"\n");
}

#[test]
fn greedy_through_the_device_mask_picks_the_host_masks_tokens() {
    let engine = engine();
    for (name, spec, _, bias) in cases() {
        let grammar = engine.compile(&spec).unwrap();
        for seed in 0..4 {
            let params = SamplingParams { temperature: 0.0, grammar: Some(grammar.clone()), ..Default::default() };
            let (mut host, mut dev) = (Sampler::new(params.clone()), Sampler::new(params));
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            for step in 0..600 {
                let mut logits: Vec<f32> = (0..VOCAB).map(|_| rng.gen_range(0.0..4.0)).collect();
                bias.iter().for_each(|&(b, x)| logits[b as usize] += x);
                let want = host.sample(&logits, VOCAB, &[], &LogprobWant::default()).token;
                let mask = dev.device_mask().expect("a constrained sampler has a mask");
                let got = crate::backend::cpu::ops::argmax_masked(&logits, VOCAB, &mask) as u32;
                assert_eq!(got, want, "{name} seed {seed} step {step}");
                host.observe(want);
                dev.observe(got);
                if want == EOS {
                    break;
                }
            }
        }
    }
}

#[test]
fn a_failed_or_complete_matcher_allows_only_eos_in_both_forms() {
    let grammar = engine().compile(&GrammarSpec::Regex("ab".into())).unwrap();
    let eos_only = {
        let mut w = vec![0u32; EOS as usize / 32 + 1];
        w[EOS as usize / 32] = 1 << (EOS % 32);
        w
    };
    let only_eos_finite = |m: &mut GrammarMatcher| {
        let mut x = vec![1.0f32; VOCAB];
        m.mask_logits(&mut x);
        x.iter().enumerate().all(|(i, v)| v.is_finite() == (i as u32 == EOS))
    };
    let mut failed = grammar.matcher();
    assert!(!only_eos_finite(&mut failed), "a fresh matcher allows 'a'");
    failed.accept(b'z' as u32); // forbidden: the error state
    let words = failed.mask_words();
    assert!((0..VOCAB).all(|i| crate::backend::mask_allows(&words, i) == (i as u32 == EOS)), "{words:?}");
    assert_eq!(words, eos_only);
    assert!(only_eos_finite(&mut failed));
    let mut done = grammar.matcher();
    done.accept(b'a' as u32);
    done.accept(b'b' as u32);
    let words = done.mask_words();
    assert!((0..VOCAB).all(|i| crate::backend::mask_allows(&words, i) == (i as u32 == EOS)), "{words:?}");
    assert!(only_eos_finite(&mut done));
}
