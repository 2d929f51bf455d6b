#!/usr/bin/env python3
"""Make the tiny random Qwen3.5 checkpoints and HF reference outputs used by kiln's tests.

Requirements (CPU is enough; about 10-30 s on 2 cores):

    pip install "torch>=2.4" "transformers>=5.0,<6" safetensors numpy

Usage (from the repository root):

    python scripts/make_fixtures.py --out tests/fixtures

Writes three models, each a complete Hugging Face checkpoint directory plus references:

  <out>/tiny_official/  model_type `qwen3_5` (Qwen3_5ForConditionalGeneration): text settings
                        under `text_config`, a tiny `vision_config` (so `model.visual.*` tensors
                        exist and must be skipped), text weights under `model.language_model.*`,
                        tied embeddings (no `lm_head.weight`), `mtp.*` tensors, bf16, two shards +
                        `model.safetensors.index.json`. 4 layers: linear, linear, linear, full.
  <out>/tiny_text/      model_type `qwen3_5_text` (Qwen3_5ForCausalLM): flat config, weights under
                        `model.*`, tied embeddings, `mtp.*` tensors, f32, one `model.safetensors`.
                        8 layers: L L L F L L L F.
  <out>/tiny_saved_tied/ a fine-tune as transformers 5 saves it: `save_pretrained` of a model made
                        from `Qwen3_5Config(..., tie_word_embeddings=True)` writes `true` at the top
                        level but `false` inside `text_config`, and no `lm_head.weight`; transformers
                        ties the head (the composite config's value governs). bf16, one file, no
                        `mtp.*`, 4 layers, three cases.

and in each directory `expected.json` + `expected.safetensors` (see tests/fixtures/README.md for
the exact row conventions), plus `expected_mtp.json` + `expected_mtp.safetensors`: chained MTP
draft logits from a torch reference of the MTP head (SGLang / vLLM semantics; `--mtp-only`
rewrites just these from the checkpoints already written). References are computed in float32 by HF transformers from the
checkpoint as saved on disk (for the bf16 model: from the bf16-rounded weights, upcast to f32).

Everything is seeded; re-running rewrites byte-identical files (same torch/transformers).
"""

import argparse
import json
import os
import shutil
import sys

import numpy as np
import torch

import safetensors
from safetensors.torch import load_file, save_file

import transformers
from transformers import (
    Qwen3_5Config,
    Qwen3_5ForCausalLM,
    Qwen3_5ForConditionalGeneration,
    Qwen3_5TextConfig,
)
from transformers.models.qwen3_5 import modeling_qwen3_5 as mq

from fixture_common import dumps_compact, read_checkpoint, top2_margin
from fixture_mtp import MtpModule, mtp_only, write_mtp_expected

SEED = 20251128
VOCAB = 1024
HIDDEN = 64
INTERMEDIATE = 128
EOS_ID = VOCAB - 1  # 1023
NEW_TOKENS = 32
PROMPT_LENGTHS = [7, 63, 64, 150]  # 150 crosses the 64-token chunk boundary twice
# Tied embeddings: the same rows are the input embedding and the lm_head. Small rows keep a token's
# own embedding from dominating the residual stream (which makes random models repeat their input
# token forever); a large final norm weight (1 + w ~ 5) restores a healthy logit spread (std ~4).
EMBED_STD = 0.1
FINAL_NORM_MEAN = 4.0
MIN_MARGIN = 0.03  # resample a prompt until greedy top-1/top-2 margins all exceed this
MAX_ATTEMPTS = 100


def text_settings(num_layers):
    """Settings shared by both tiny models (same field names as the real Qwen3.5 text config)."""
    return dict(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=num_layers,
        layer_types=["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(num_layers)],
        full_attention_interval=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        attn_output_gate=True,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=32,
        linear_value_head_dim=32,
        linear_conv_kernel_dim=4,
        hidden_act="silu",
        rms_norm_eps=1e-6,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        eos_token_id=EOS_ID,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000000.0,
            "partial_rotary_factor": 0.25,
            "mrope_section": [11, 11, 10],
            "mrope_interleaved": True,
        },
        mamba_ssm_dtype="float32",
        mtp_num_hidden_layers=1,
        mtp_use_dedicated_embeddings=False,
        attention_bias=False,
        attention_dropout=0.0,
        initializer_range=0.02,
        use_cache=True,
    )


VISION_SETTINGS = dict(
    depth=1,
    hidden_size=32,
    intermediate_size=64,
    num_heads=2,
    in_channels=3,
    patch_size=4,
    temporal_patch_size=2,
    spatial_merge_size=2,
    out_hidden_size=HIDDEN,
    num_position_embeddings=16,
)


# ---------------------------------------------------------------------------------------------
# weights


def init_tensor(name, shape, gen):
    """A random value for parameter `name`, deliberately far from HF's init values."""

    def normal(std, mean=0.0):
        return torch.randn(shape, generator=gen, dtype=torch.float32) * std + mean

    def uniform(lo, hi):
        return torch.rand(shape, generator=gen, dtype=torch.float32) * (hi - lo) + lo

    if ".visual." in name or name.startswith("model.visual"):
        # Never used by kiln; any deterministic values do.
        if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name.endswith("norm.weight"):
            return normal(0.1, 1.0)
        return normal(0.02)
    if name.endswith("linear_attn.A_log"):
        return uniform(-3.0, 0.5)  # A in [0.05, 1.65]: decays exp(g) from ~0.97 to ~0.1
    if name.endswith("linear_attn.dt_bias"):
        return uniform(-1.0, 1.0)
    if name.endswith("linear_attn.conv1d.weight"):
        return normal(0.35)
    if name.endswith("linear_attn.norm.weight"):
        return uniform(0.6, 1.4)  # gated RMSNorm: plain weight (not 1 + w)
    if name in ("model.norm.weight", "model.language_model.norm.weight", "mtp.norm.weight"):
        return normal(0.3, FINAL_NORM_MEAN)  # final norms before the tied lm_head, (1 + w) ~ 5
    if name.endswith("norm.weight") or name.endswith("layernorm.weight") or ".pre_fc_norm_" in name:
        return normal(0.2)  # every other RMSNorm is applied as (1 + w)
    if name.endswith("embed_tokens.weight"):
        return normal(EMBED_STD)
    if len(shape) == 2:
        fan_in = shape[1]
        if name.endswith(("o_proj.weight", "out_proj.weight", "down_proj.weight")):
            # Projections back into the residual stream: a bit larger so the layers, not the
            # token's own embedding, dominate the residual (std 0.106 for fan-in 128, 0.075 for 256).
            return normal(1.2 / fan_in**0.5)
        return normal(0.8 / fan_in**0.5)  # 0.1 for fan-in 64 and 0.071 for fan-in 128
    raise ValueError(f"no init rule for {name} {tuple(shape)}")


@torch.no_grad()
def randomize(module, gen, prefix=""):
    for name, p in module.named_parameters():
        p.copy_(init_tensor(prefix + name, tuple(p.shape), gen))


def mtp_tensors(text_cfg, seed):
    gen = torch.Generator().manual_seed(seed)
    mtp = MtpModule(text_cfg)
    randomize(mtp, gen, prefix="mtp.")
    return {"mtp." + k: v.detach().clone() for k, v in mtp.state_dict().items()}


def checkpoint_tensors(model, mtp, dtype):
    sd = {k: v.detach().to(dtype).contiguous().clone() for k, v in model.state_dict().items()}
    sd.pop("lm_head.weight")  # tied to embed_tokens, absent from the real checkpoints
    for k, v in mtp.items():
        sd[k] = v.to(dtype).contiguous()
    return sd


def write_sharded(sd, out_dir, n_shards=2):
    names = list(sd.keys())
    sizes = [sd[n].numel() * sd[n].element_size() for n in names]
    total = sum(sizes)
    shards, cur, acc = [[] for _ in range(n_shards)], 0, 0
    for n, s in zip(names, sizes):
        if acc >= total * (cur + 1) / n_shards and cur < n_shards - 1:
            cur += 1
        shards[cur].append(n)
        acc += s
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"
        save_file({n: sd[n] for n in shard}, os.path.join(out_dir, fname), metadata={"format": "pt"})
        for n in shard:
            weight_map[n] = fname
    index = {
        "metadata": {"total_parameters": sum(v.numel() for v in sd.values()), "total_size": total},
        "weight_map": dict(sorted(weight_map.items())),
    }
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
        f.write("\n")


# ---------------------------------------------------------------------------------------------
# references


class PathCounter:
    """Counts calls of HF's two Gated DeltaNet forms to prove which one each forward used."""

    def __init__(self):
        self.chunk = self.recurrent = 0
        self._chunk_fn, self._rec_fn = mq.torch_chunk_gated_delta_rule, mq.torch_recurrent_gated_delta_rule

        def chunk(*a, **k):
            self.chunk += 1
            return self._chunk_fn(*a, **k)

        def rec(*a, **k):
            self.recurrent += 1
            return self._rec_fn(*a, **k)

        mq.torch_chunk_gated_delta_rule, mq.torch_recurrent_gated_delta_rule = chunk, rec

    def take(self):
        c, r = self.chunk, self.recurrent
        self.chunk = self.recurrent = 0
        return c, r


@torch.no_grad()
def run_case(model, prompt, n_linear, counter):
    ids = torch.tensor([prompt], dtype=torch.long)
    L = len(prompt)

    # Prefill: one forward over the whole prompt with a fresh cache (chunked GDN form).
    counter.take()
    out = model(input_ids=ids, use_cache=True)
    assert counter.take() == (n_linear, 0), "prefill must use the chunked Gated DeltaNet form"
    prompt_logits = out.logits[0].float().clone()
    cache = out.cache if hasattr(out, "cache") else out.past_key_values
    assert cache.get_seq_length() == L

    # Decode: feed greedy_ids[i], get decode_logits[i] (recurrent GDN form, one token at a time).
    greedy = [int(prompt_logits[-1].argmax())]
    decode_logits = []
    for i in range(NEW_TOKENS):
        out = model(input_ids=torch.tensor([[greedy[i]]]), cache=cache, use_cache=True)
        assert counter.take() == (0, n_linear), "decode must use the recurrent Gated DeltaNet form"
        cache = out.cache if hasattr(out, "cache") else out.past_key_values
        row = out.logits[0, -1].float().clone()
        decode_logits.append(row)
        if i + 1 < NEW_TOKENS:
            greedy.append(int(row.argmax()))
    decode_logits = torch.stack(decode_logits)
    assert cache.get_seq_length() == L + NEW_TOKENS

    return dict(
        prompt_logits=prompt_logits,
        decode_logits=decode_logits,
        greedy=greedy,
        margin_prefill_last=top2_margin(prompt_logits[-1]),
        margin_prefill_all=top2_margin(prompt_logits),
        margin_decode=top2_margin(decode_logits),
    )


@torch.no_grad()
def cross_check(model, prompt, r, counter):
    """HF self-consistency: generate() and one full forward must agree with the prefill+decode."""
    L, greedy = len(prompt), r["greedy"]
    prompt_logits, decode_logits = r["prompt_logits"], r["decode_logits"]
    ids = torch.tensor([prompt], dtype=torch.long)
    # Cross-check 1: HF generate() with its own cache handling gives the same greedy ids.
    gen_out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),  # explicit: random prompts may contain the pad id
        do_sample=False,
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        eos_token_id=None,
        pad_token_id=0,
        output_logits=True,
        return_dict_in_generate=True,
    )
    counter.take()
    gen_ids = gen_out.sequences[0, L:].tolist()
    assert gen_ids == greedy, f"generate() disagrees with the manual loop: {gen_ids} vs {greedy}"
    # generate's logits[j] produced token j: [prompt_logits[-1], decode_logits[0..30]]
    gen_logits = torch.stack(gen_out.logits)[:, 0].float()
    mine = torch.cat([prompt_logits[-1:], decode_logits[:-1]])
    diff_generate = (gen_logits - mine).abs().max().item()

    # Cross-check 2: one full forward (no cache, chunked form) over prompt + generated tokens.
    full_ids = torch.tensor([prompt + greedy], dtype=torch.long)
    full = model(input_ids=full_ids, use_cache=False).logits[0].float()
    counter.take()
    diff_prompt = (full[:L] - prompt_logits).abs().max().item()
    # full[L + i] is the output after greedy[i] was fed, i.e. decode_logits[i] (i < 32).
    assert full.shape[0] == L + NEW_TOKENS
    diff_decode = (full[L:] - decode_logits).abs().max().item()

    r.update(
        diff=max(diff_prompt, diff_decode),
        diff_prompt=diff_prompt,
        diff_decode=diff_decode,
        diff_generate=diff_generate,
    )


def write_expected(model_dir, name, dtype_name, model, n_linear, rng, counter, lengths=PROMPT_LENGTHS):
    cases, tensors, max_diff = [], {}, 0.0
    for L in lengths:
        # Draw prompts until every greedy decision (prompt_logits[-1] and all 32 decode rows) has a
        # top-1/top-2 margin of at least MIN_MARGIN, so an f32 reimplementation cannot flip one.
        for attempt in range(1, MAX_ATTEMPTS + 1):
            prompt = [int(x) for x in rng.integers(0, VOCAB, size=L)]
            r = run_case(model, prompt, n_linear, counter)
            if min(r["margin_prefill_last"], r["margin_decode"]) >= MIN_MARGIN:
                cross_check(model, prompt, r, counter)
                break
        else:
            raise SystemExit(f"{name}: no prompt of length {L} with margins >= {MIN_MARGIN} in {MAX_ATTEMPTS} draws")
        cname = f"p{L}"
        tensors[f"{cname}.prompt_logits"] = r["prompt_logits"].contiguous()
        tensors[f"{cname}.decode_logits"] = r["decode_logits"].contiguous()
        max_diff = max(max_diff, r["diff"])
        cases.append(
            {
                "name": cname,
                "prompt_ids": prompt,
                "greedy_ids": r["greedy"],
                "min_top2_margin_prefill_last": round(r["margin_prefill_last"], 6),
                "min_top2_margin_decode": round(r["margin_decode"], 6),
                "min_top2_margin_prefill_all": round(r["margin_prefill_all"], 6),
            }
        )
        print(
            f"  {name}/{cname}: greedy {r['greedy'][:8]}... margins: prefill_last {r['margin_prefill_last']:.4f} "
            f"prefill_all {r['margin_prefill_all']:.4f} decode {r['margin_decode']:.4f}; "
            f"logit std {r['prompt_logits'].std().item():.2f}; "
            f"prefill-vs-full {r['diff_prompt']:.2e} decode-vs-full {r['diff_decode']:.2e}; "
            f"generate-vs-loop {r['diff_generate']:.1e}; "
            f"distinct greedy ids {len(set(r['greedy']))}; prompt draw #{attempt}"
            + (f"; NOTE: eos {EOS_ID} among greedy ids" if EOS_ID in r["greedy"] else "")
        )
    save_file(tensors, os.path.join(model_dir, "expected.safetensors"), metadata={"format": "pt"})
    doc = {
        "model": name,
        "dtype": dtype_name,
        "vocab_size": VOCAB,
        "cases": cases,
        "hf_prefill_vs_full_max_abs_diff": float(f"{max_diff:.3e}"),
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
    }
    with open(os.path.join(model_dir, "expected.json"), "w") as f:
        f.write(dumps_compact(doc))
    print(f"  {name}: HF prefill+decode vs full forward max |diff| = {max_diff:.3e}")
    return doc


# ---------------------------------------------------------------------------------------------
# independent check: a from-scratch float64 model, token by token, read straight from the files


def load_text_weights(model_dir):
    """The text-model tensors of a checkpoint directory as float64, with the layout prefix
    (`model.language_model.` or `model.`) stripped; `model.visual.*` and `mtp.*` are skipped."""
    w = {}
    for k, v in read_checkpoint(model_dir).items():
        for prefix in ("model.language_model.", "model."):
            if k.startswith(prefix) and not k.startswith("model.visual."):
                w[k[len(prefix):]] = v.double()
                break
    return w


@torch.no_grad()
def reference_logits(w, tc, ids):
    """Logits [len(ids), V] of a plain float64 Qwen3.5 text model that processes one token at a
    time (recurrent Gated DeltaNet, KV-cache attention). Written from the math, not from HF."""
    H, eps = tc.hidden_size, tc.rms_norm_eps
    nh, nkv, hd = tc.num_attention_heads, tc.num_key_value_heads, tc.head_dim
    nk, nv, dk, dv = tc.linear_num_key_heads, tc.linear_num_value_heads, tc.linear_key_head_dim, tc.linear_value_head_dim
    K = tc.linear_conv_kernel_dim
    rd = int(hd * tc.rope_parameters["partial_rotary_factor"])
    inv_freq = 1.0 / tc.rope_parameters["rope_theta"] ** (torch.arange(0, rd, 2, dtype=torch.float64) / rd)

    def rms(x, weight, plus_one=True):
        y = x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)
        return y * ((1.0 + weight) if plus_one else weight)

    def silu(x):
        return x * torch.sigmoid(x)

    def rope(x, pos):  # x [heads, hd]; rotate-half over the first rd dims only
        ang = pos * inv_freq
        cos, sin = torch.cat([ang.cos(), ang.cos()]), torch.cat([ang.sin(), ang.sin()])
        r, p = x[:, :rd], x[:, rd:]
        rot = torch.cat([-r[:, rd // 2 :], r[:, : rd // 2]], -1)
        return torch.cat([r * cos + rot * sin, p], -1)

    state = []
    for i, t in enumerate(tc.layer_types):
        if t == "linear_attention":
            conv_dim = 2 * nk * dk + nv * dv
            state.append({"conv": torch.zeros(conv_dim, K - 1, dtype=torch.float64),
                          "S": torch.zeros(nv, dk, dv, dtype=torch.float64)})
        else:
            state.append({"k": [], "v": []})

    emb = w["embed_tokens.weight"]
    out = []
    for pos, tok in enumerate(ids):
        x = emb[tok].clone()
        for i, t in enumerate(tc.layer_types):
            p, st = f"layers.{i}.", state[i]
            h = rms(x, w[p + "input_layernorm.weight"])
            if t == "linear_attention":
                a_ = p + "linear_attn."
                qkv = w[a_ + "in_proj_qkv.weight"] @ h
                z = (w[a_ + "in_proj_z.weight"] @ h).view(nv, dv)
                b = w[a_ + "in_proj_b.weight"] @ h
                a = w[a_ + "in_proj_a.weight"] @ h
                win = torch.cat([st["conv"], qkv[:, None]], 1)  # [conv_dim, K]: oldest .. current
                st["conv"] = win[:, 1:]
                c = silu((win * w[a_ + "conv1d.weight"][:, 0, :]).sum(-1))
                q = c[: nk * dk].view(nk, dk)
                k = c[nk * dk : 2 * nk * dk].view(nk, dk)
                v = c[2 * nk * dk :].view(nv, dv)
                q = q / torch.sqrt((q * q).sum(-1, keepdim=True) + 1e-6) * dk**-0.5
                k = k / torch.sqrt((k * k).sum(-1, keepdim=True) + 1e-6)
                beta = torch.sigmoid(b)
                g = -torch.exp(w[a_ + "A_log"]) * F_softplus(a + w[a_ + "dt_bias"])
                o = torch.empty(nv, dv, dtype=torch.float64)
                for vh in range(nv):
                    kh = vh // (nv // nk)  # key head kh serves value heads kh*r .. kh*r+r-1
                    S = st["S"][vh] * torch.exp(g[vh])
                    S = S + torch.outer(k[kh], beta[vh] * (v[vh] - S.T @ k[kh]))
                    st["S"][vh] = S
                    o[vh] = S.T @ q[kh]
                o = rms(o, w[a_ + "norm.weight"], plus_one=False) * silu(z)
                y = w[a_ + "out_proj.weight"] @ o.reshape(-1)
            else:
                a_ = p + "self_attn."
                qg = (w[a_ + "q_proj.weight"] @ h).view(nh, 2 * hd)
                q, gate = qg[:, :hd], qg[:, hd:].reshape(-1)
                q = rope(rms(q, w[a_ + "q_norm.weight"]), pos)
                k = rope(rms((w[a_ + "k_proj.weight"] @ h).view(nkv, hd), w[a_ + "k_norm.weight"]), pos)
                v = (w[a_ + "v_proj.weight"] @ h).view(nkv, hd)
                st["k"].append(k)
                st["v"].append(v)
                Ks, Vs = torch.stack(st["k"], 1), torch.stack(st["v"], 1)  # [nkv, T, hd]
                o = torch.empty(nh, hd, dtype=torch.float64)
                for qh in range(nh):
                    kvh = qh // (nh // nkv)
                    pr = torch.softmax(Ks[kvh] @ q[qh] * hd**-0.5, 0)
                    o[qh] = pr @ Vs[kvh]
                y = w[a_ + "o_proj.weight"] @ (o.reshape(-1) * torch.sigmoid(gate))
            x = x + y
            h = rms(x, w[p + "post_attention_layernorm.weight"])
            m_ = p + "mlp."
            x = x + w[m_ + "down_proj.weight"] @ (silu(w[m_ + "gate_proj.weight"] @ h) * (w[m_ + "up_proj.weight"] @ h))
        out.append(emb @ rms(x, w["norm.weight"]))
    return torch.stack(out)


def F_softplus(x):
    return torch.nn.functional.softplus(x)


def independent_check(model_dir, tc):
    """Recompute every case from the files with reference_logits and compare with expected.*"""
    w = load_text_weights(model_dir)
    with open(os.path.join(model_dir, "expected.json")) as f:
        doc = json.load(f)
    exp = load_file(os.path.join(model_dir, "expected.safetensors"))
    worst = 0.0
    for case in doc["cases"]:
        L, g = len(case["prompt_ids"]), case["greedy_ids"]
        ref = reference_logits(w, tc, case["prompt_ids"] + g).float()
        hf = torch.cat([exp[case["name"] + ".prompt_logits"], exp[case["name"] + ".decode_logits"]])
        diff = (ref - hf).abs().max().item()
        worst = max(worst, diff)
        assert ref[L - 1 :].argmax(-1)[: len(g)].tolist() == g, f"{case['name']}: greedy ids differ"
        assert diff < 2e-3, f"{case['name']}: float64 reference differs from HF by {diff}"
    print(f"  {doc['model']}: independent float64 token-by-token model vs HF f32 logits: max |diff| = {worst:.2e}")
    return worst


# ---------------------------------------------------------------------------------------------
# the two models


def clean_dir(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.makedirs(path)


def save_config(cfg, out_dir):
    cfg.save_pretrained(out_dir)  # writes config.json exactly as transformers serializes it
    assert sorted(os.listdir(out_dir)) == ["config.json"], os.listdir(out_dir)


def make_official(out_root, counter):
    name = "tiny_official"
    d = os.path.join(out_root, name)
    clean_dir(d)
    tcfg = text_settings(4)
    cfg = Qwen3_5Config(text_config=tcfg, vision_config=VISION_SETTINGS, tie_word_embeddings=True)
    cfg.architectures = ["Qwen3_5ForConditionalGeneration"]
    torch.manual_seed(SEED)
    model = Qwen3_5ForConditionalGeneration(cfg).eval()
    randomize(model, torch.Generator().manual_seed(SEED + 1))
    mtp = mtp_tensors(cfg.text_config, SEED + 2)
    sd = checkpoint_tensors(model, mtp, torch.bfloat16)
    cfg.dtype = torch.bfloat16
    cfg.text_config.dtype = torch.bfloat16
    save_config(cfg, d)
    write_sharded(sd, d, 2)
    del model

    # Reference: load the checkpoint as saved (bf16 values) and compute in float32.
    model, info = Qwen3_5ForConditionalGeneration.from_pretrained(
        d, dtype=torch.float32, attn_implementation="eager", output_loading_info=True
    )
    check_loading(info, model, sd)
    model.eval()
    doc = write_expected(d, name, "bfloat16", model, 3, np.random.default_rng(SEED + 3), counter)
    independent_check(d, cfg.text_config)
    write_mtp_expected(d, name, model, model.config.text_config)
    return doc


def make_text(out_root, counter):
    name = "tiny_text"
    d = os.path.join(out_root, name)
    clean_dir(d)
    cfg = Qwen3_5TextConfig(**text_settings(8))
    cfg.architectures = ["Qwen3_5ForCausalLM"]
    torch.manual_seed(SEED + 10)
    model = Qwen3_5ForCausalLM(cfg).eval()
    randomize(model, torch.Generator().manual_seed(SEED + 11))
    mtp = mtp_tensors(cfg, SEED + 12)
    sd = checkpoint_tensors(model, mtp, torch.float32)
    cfg.dtype = torch.float32
    save_config(cfg, d)
    save_file(sd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    del model

    model, info = Qwen3_5ForCausalLM.from_pretrained(
        d, dtype=torch.float32, attn_implementation="eager", output_loading_info=True
    )
    check_loading(info, model, sd)
    model.eval()
    doc = write_expected(d, name, "float32", model, 6, np.random.default_rng(SEED + 13), counter)
    independent_check(d, cfg)
    write_mtp_expected(d, name, model, model.config)
    return doc


def make_saved_tied(out_root, counter):
    name = "tiny_saved_tied"
    d = os.path.join(out_root, name)
    clean_dir(d)
    tset = text_settings(4)
    del tset["tie_word_embeddings"]  # the text config keeps its own default (false)
    cfg = Qwen3_5Config(text_config=tset, vision_config=VISION_SETTINGS, tie_word_embeddings=True)
    cfg.architectures = ["Qwen3_5ForConditionalGeneration"]
    torch.manual_seed(SEED + 20)
    model = Qwen3_5ForConditionalGeneration(cfg).eval()
    randomize(model, torch.Generator().manual_seed(SEED + 21))  # lm_head shares embed_tokens' tensor
    model.to(torch.bfloat16).save_pretrained(d)  # exactly what transformers writes: config, weights
    del model
    with open(os.path.join(d, "config.json")) as f:
        saved = json.load(f)
    assert saved["tie_word_embeddings"] is True and saved["text_config"]["tie_word_embeddings"] is False, saved
    with safetensors.safe_open(os.path.join(d, "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if "lm_head" in k or k.startswith("mtp.")]

    model, info = Qwen3_5ForConditionalGeneration.from_pretrained(
        d, dtype=torch.float32, attn_implementation="eager", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr(), "not tied"
    model.eval()
    doc = write_expected(d, name, "bfloat16", model, 3, np.random.default_rng(SEED + 23), counter, lengths=[7, 20, 64])
    independent_check(d, model.config.text_config)
    return doc


def check_loading(info, model, sd):
    assert not info["missing_keys"], info["missing_keys"]
    unexpected = [k for k in info["unexpected_keys"] if not k.startswith("mtp.")]
    assert not unexpected, unexpected
    msd = model.state_dict()
    for k, v in sd.items():
        if k.startswith("mtp."):
            continue
        assert torch.equal(msd[k], v.float()), f"{k} did not round-trip"
    emb = [k for k in msd if k.endswith("embed_tokens.weight")][0]
    assert model.lm_head.weight.data_ptr() == msd[emb].data_ptr() or torch.equal(model.lm_head.weight, msd[emb])
    assert all(p.dtype == torch.float32 for p in model.parameters())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures", help="output folder (default tests/fixtures)")
    ap.add_argument("--only", nargs="*", metavar="NAME", help="make only these models (default: all)")
    ap.add_argument("--mtp-only", action="store_true", help="only (re)write expected_mtp.* from the checkpoints in --out")
    args = ap.parse_args()

    major = int(transformers.__version__.split(".")[0])
    if major < 5:
        sys.exit(f"transformers >= 5 is required, found {transformers.__version__}")
    for pkg in ("fla", "causal_conv1d"):
        try:
            __import__(pkg)
            print(f"note: `{pkg}` is installed; HF may use its kernels instead of the torch reference path")
        except ImportError:
            pass

    torch.set_num_threads(1)  # bit-reproducible reductions
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    os.makedirs(args.out, exist_ok=True)
    counter = PathCounter()

    print(f"transformers {transformers.__version__}, torch {torch.__version__}, safetensors {safetensors.__version__}")
    if args.mtp_only:
        mtp_only(args.out)
        return
    makers = {"tiny_official": make_official, "tiny_text": make_text, "tiny_saved_tied": make_saved_tied}
    names = args.only or list(makers)
    for n in names:
        makers[n](args.out, counter)
    for n in names:
        d = os.path.join(args.out, n)
        size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
        print(f"{d}: {size / 1e6:.2f} MB in {len(os.listdir(d))} files")


if __name__ == "__main__":
    main()
