//! The embedded demo model: a small random Qwen3.5-shaped model (4 layers, hidden 64, an
//! MTP head) with the real 248,320-row vocabulary, served when no GPU or no model is
//! present, so that `launch_server.sh` (also with `--speculative-algorithm NEXTN`) works anywhere. Its outputs are meaningless text; the point
//! is that every code path (tokenizer, template, scheduler, HTTP) runs for real.

use crate::checkpoint::{FullAttnWeights, LayerWeights, LinearAttnWeights, Mixer, MlpWeights, MtpWeights, Weights};
use crate::config::{LayerKind, ModelConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub const DEMO_SEED: u64 = 0x6b696c6e; // "kiln"

/// The demo model's config: Qwen3.5's structure at toy width.
pub fn demo_config() -> ModelConfig {
    ModelConfig {
        model_type: "qwen3_5_text".into(),
        hidden_size: 64,
        intermediate_size: 128,
        num_layers: 4,
        layer_kinds: vec![LayerKind::Linear, LayerKind::Linear, LayerKind::Linear, LayerKind::Full],
        vocab_size: 248_320,
        rms_norm_eps: 1e-6,
        tie_word_embeddings: true,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 64,
        rope_theta: 1e7,
        rotary_dim: 16,
        max_position_embeddings: 262_144,
        linear_num_key_heads: 2,
        linear_num_value_heads: 4,
        linear_key_head_dim: 32,
        linear_value_head_dim: 32,
        conv_kernel: 4,
        mtp_num_layers: 1,
        eos_token_ids: vec![248_044],
    }
}

struct Gen(ChaCha8Rng);

impl Gen {
    /// Uniform in [-a, a]: cheap, seeded, and spread enough to give non-flat logits.
    fn t(&mut self, n: usize, a: f32) -> Vec<f32> {
        (0..n).map(|_| self.0.gen_range(-a..a)).collect()
    }
}

/// Deterministic random weights for `demo_config()`.
pub fn demo_weights() -> (ModelConfig, Weights) {
    let c = demo_config();
    let w = random_weights(&c, DEMO_SEED);
    (c, w)
}

/// Deterministic random weights of any Qwen3.5 shape, with an MTP head when
/// `c.mtp_num_layers > 0` (drawn last, so the main weights do not depend on it): for the
/// demo and for tests that need a model but no reference numbers.
pub fn random_weights(c: &ModelConfig, seed: u64) -> Weights {
    let mut g = Gen(ChaCha8Rng::seed_from_u64(seed));
    let layers = c.layer_kinds.iter().map(|k| random_layer(c, *k, &mut g)).collect();
    let embed = g.t(c.vocab_size * c.hidden_size, 1.0);
    let norm = g.t(c.hidden_size, 0.2);
    let mtp = (c.mtp_num_layers > 0).then(|| random_mtp(c, &mut g));
    Weights { embed, lm_head: None, norm, layers, mtp }
}

/// A random MTP head that leans toward copying its input token: fc passes half the
/// embedding through beside noise, and the layer adds only a little to the residual. The
/// demo model tends to repeat tokens, so about half to all of its drafts are accepted
/// (measured 1.9-3.9 tokens per verify on three prompts, k = 3): full, partial and no
/// acceptance all occur. A purely random head accepts nothing.
fn random_mtp(c: &ModelConfig, g: &mut Gen) -> MtpWeights {
    let h = c.hidden_size;
    let mut fc = g.t(h * 2 * h, 1.5 / (2.0 * h as f32).sqrt());
    for r in 0..h {
        fc[r * 2 * h + r] += 0.5;
    }
    let mut layers: Vec<LayerWeights> = (0..c.mtp_num_layers).map(|_| random_layer(c, LayerKind::Full, g)).collect();
    for l in &mut layers {
        l.mlp.down.iter_mut().for_each(|v| *v *= 0.1);
        if let Mixer::Full(a) = &mut l.mixer {
            a.o.iter_mut().for_each(|v| *v *= 0.1);
        }
    }
    MtpWeights { pre_fc_norm_embedding: g.t(h, 0.2), pre_fc_norm_hidden: g.t(h, 0.2), fc, layers, norm: g.t(h, 0.2) }
}

fn random_layer(c: &ModelConfig, kind: LayerKind, g: &mut Gen) -> LayerWeights {
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let lin = 1.0 / (h as f32).sqrt();
    LayerWeights {
        input_norm: g.t(h, 0.2),
        post_norm: g.t(h, 0.2),
        mixer: match kind {
            LayerKind::Linear => Mixer::Linear(LinearAttnWeights {
                in_qkv: g.t(c.linear_qkv_dim() * h, lin),
                in_z: g.t(c.linear_value_dim() * h, lin),
                in_b: g.t(c.linear_num_value_heads * h, lin),
                in_a: g.t(c.linear_num_value_heads * h, lin),
                conv: g.t(c.linear_qkv_dim() * c.conv_kernel, 0.5),
                dt_bias: g.t(c.linear_num_value_heads, 1.0),
                a_log: g.t(c.linear_num_value_heads, 1.0),
                norm: g.t(c.linear_value_head_dim, 0.2).iter().map(|v| 1.0 + v).collect(),
                out: g.t(h * c.linear_value_dim(), 1.0 / (c.linear_value_dim() as f32).sqrt()),
            }),
            LayerKind::Full => Mixer::Full(FullAttnWeights {
                q: g.t(2 * c.num_heads * c.head_dim * h, lin),
                k: g.t(c.num_kv_heads * c.head_dim * h, lin),
                v: g.t(c.num_kv_heads * c.head_dim * h, lin),
                o: g.t(h * c.num_heads * c.head_dim, 1.0 / ((c.num_heads * c.head_dim) as f32).sqrt()),
                q_norm: g.t(c.head_dim, 0.2),
                k_norm: g.t(c.head_dim, 0.2),
            }),
        },
        mlp: MlpWeights { gate: g.t(i * h, lin), up: g.t(i * h, lin), down: g.t(h * i, 1.0 / (i as f32).sqrt()) },
    }
}
