use super::*;
use serde_json::json;

fn official() -> Value {
    json!({
        "model_type": "qwen3_5",
        "tie_word_embeddings": true,
        "text_config": {
            "model_type": "qwen3_5_text",
            "hidden_size": 2560, "intermediate_size": 9216, "num_hidden_layers": 8,
            "layer_types": ["linear_attention","linear_attention","linear_attention","full_attention",
                            "linear_attention","linear_attention","linear_attention","full_attention"],
            "vocab_size": 248320, "rms_norm_eps": 1e-6,
            "num_attention_heads": 16, "num_key_value_heads": 4, "head_dim": 256,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.25,
                                "mrope_section": [11, 11, 10], "mrope_interleaved": true},
            "linear_num_key_heads": 16, "linear_num_value_heads": 32,
            "linear_key_head_dim": 128, "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4,
            "hidden_act": "silu", "attn_output_gate": true, "eos_token_id": 248044,
            "mtp_num_hidden_layers": 1, "mamba_ssm_dtype": "float32"
        }
    })
}

#[test]
fn parses_official_layout() {
    let c = ModelConfig::from_json(&official()).unwrap();
    assert_eq!(c.rotary_dim, 64);
    assert_eq!(c.rope_theta, 1e7);
    assert_eq!(c.num_full_layers(), 2);
    assert_eq!(c.kind_index(7), 1);
    assert_eq!(c.kind_index(6), 5);
    assert_eq!(c.linear_qkv_dim(), 8192);
    assert_eq!(c.eos_token_ids, vec![248044]);
    assert!(c.tie_word_embeddings);
}

#[test]
fn parses_flat_text_layout() {
    let mut v = official()["text_config"].clone();
    v["tie_word_embeddings"] = json!(true);
    let c = ModelConfig::from_json(&v).unwrap();
    assert_eq!(c.model_type, "qwen3_5_text");
    assert_eq!(c.hidden_size, 2560);
}

/// transformers' rule (checked against transformers 5.24 by scripts/make_fixtures.py's
/// `tiny_saved_tied`): for `qwen3_5` the composite config's top-level value governs, for
/// `qwen3_5_text` the flat config's own; absent means false.
#[test]
fn tie_word_embeddings_follows_transformers() {
    let tie = |v: &Value| ModelConfig::from_json(v).unwrap().tie_word_embeddings;
    // As transformers 5 saves Qwen3_5Config(..., tie_word_embeddings=True): true at the top,
    // false inside text_config. The head is tied.
    let mut saved = official();
    saved["text_config"]["tie_word_embeddings"] = json!(false);
    assert!(tie(&saved));
    // The converse: text_config's true does not tie a composite config without the top-level flag.
    let mut v = official();
    v.as_object_mut().unwrap().remove("tie_word_embeddings");
    v["text_config"]["tie_word_embeddings"] = json!(true);
    assert!(!tie(&v));
    v["tie_word_embeddings"] = json!(false);
    assert!(!tie(&v));
    // qwen3_5_text: its own value, default false.
    let mut flat = official()["text_config"].clone();
    assert!(!tie(&flat));
    flat["tie_word_embeddings"] = json!(true);
    assert!(tie(&flat));
}

#[test]
fn refuses_bad_fields_by_name() {
    let cases: Vec<(&str, Value, &str)> = vec![
        ("model_type", json!("llama"), "model_type `llama`"),
        ("text_config.num_key_value_heads", json!(3), "num_key_value_heads (3)"),
        ("text_config.layer_types", json!(["linear_attention"]), "layer_types has 1 entries"),
        ("text_config.hidden_act", json!("gelu"), "hidden_act `gelu`"),
        ("text_config.head_dim", json!("x"), "`head_dim` must be"),
        ("text_config.rope_parameters", json!({"rope_type": "yarn"}), "rope_type `yarn`"),
    ];
    for (path, value, want) in cases {
        let mut v = official();
        let mut slot = &mut v;
        let parts: Vec<&str> = path.split('.').collect();
        for p in &parts[..parts.len() - 1] {
            slot = slot.get_mut(*p).unwrap();
        }
        slot[parts[parts.len() - 1]] = value;
        let err = ModelConfig::from_json(&v).unwrap_err().to_string();
        assert!(err.contains(want), "{path}: got `{err}`, want it to contain `{want}`");
    }
}
