//! The config of Qwen3.5-4B (`Qwen/Qwen3.5-4B`, official multimodal layout): the default
//! model dimensions of `kiln-build --compile-only` when no `--model` is given. Only the
//! text settings matter to kiln; the vision tower's config is left out.

use anyhow::Result;
use kiln::config::ModelConfig;

pub const CONFIG_JSON: &str = r#"{
    "architectures": ["Qwen3_5ForConditionalGeneration"],
    "model_type": "qwen3_5",
    "tie_word_embeddings": true,
    "text_config": {
        "model_type": "qwen3_5_text",
        "attention_bias": false,
        "attention_dropout": 0.0,
        "attn_output_gate": true,
        "dtype": "bfloat16",
        "eos_token_id": 248044,
        "full_attention_interval": 4,
        "head_dim": 256,
        "hidden_act": "silu",
        "hidden_size": 2560,
        "initializer_range": 0.02,
        "intermediate_size": 9216,
        "layer_types": [
            "linear_attention", "linear_attention", "linear_attention", "full_attention",
            "linear_attention", "linear_attention", "linear_attention", "full_attention",
            "linear_attention", "linear_attention", "linear_attention", "full_attention",
            "linear_attention", "linear_attention", "linear_attention", "full_attention",
            "linear_attention", "linear_attention", "linear_attention", "full_attention",
            "linear_attention", "linear_attention", "linear_attention", "full_attention",
            "linear_attention", "linear_attention", "linear_attention", "full_attention",
            "linear_attention", "linear_attention", "linear_attention", "full_attention"
        ],
        "linear_conv_kernel_dim": 4,
        "linear_key_head_dim": 128,
        "linear_num_key_heads": 16,
        "linear_num_value_heads": 32,
        "linear_value_head_dim": 128,
        "mamba_ssm_dtype": "float32",
        "max_position_embeddings": 262144,
        "mtp_num_hidden_layers": 1,
        "num_attention_heads": 16,
        "num_hidden_layers": 32,
        "num_key_value_heads": 4,
        "rms_norm_eps": 1e-06,
        "rope_parameters": {
            "mrope_interleaved": true,
            "mrope_section": [11, 11, 10],
            "partial_rotary_factor": 0.25,
            "rope_theta": 10000000,
            "rope_type": "default"
        },
        "tie_word_embeddings": true,
        "use_cache": true,
        "vocab_size": 248320
    }
}"#;

/// Qwen3.5-4B's `ModelConfig`.
pub fn config() -> Result<ModelConfig> {
    ModelConfig::from_json(&serde_json::from_str(CONFIG_JSON)?)
}

#[cfg(test)]
mod tests {
    use kiln::backend::cuda::compile::KernelDims;
    use kiln::config::LayerKind;

    #[test]
    fn matches_the_published_shape() {
        let c = super::config().unwrap();
        assert_eq!((c.hidden_size, c.intermediate_size, c.num_layers, c.vocab_size), (2560, 9216, 32, 248320));
        assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim, c.rotary_dim), (16, 4, 256, 64));
        assert_eq!((c.linear_num_key_heads, c.linear_key_head_dim), (16, 128));
        assert_eq!((c.linear_num_value_heads, c.linear_value_head_dim, c.conv_kernel), (32, 128, 4));
        assert_eq!(c.linear_qkv_dim(), 8192);
        assert_eq!((c.rope_theta, c.rms_norm_eps), (1e7, 1e-6));
        assert!(c.tie_word_embeddings);
        assert_eq!((c.mtp_num_layers, c.eos_token_ids.as_slice()), (1, &[248044][..]));
        let full: Vec<usize> = (0..32).filter(|&i| c.layer_kinds[i] == LayerKind::Full).collect();
        assert_eq!(full, vec![3, 7, 11, 15, 19, 23, 27, 31]);
        // The kernel crate's own constant agrees.
        assert_eq!(KernelDims::from_config(&c), KernelDims::qwen3_5_4b());
    }
}
