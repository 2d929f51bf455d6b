#!/usr/bin/env python3
"""Full-size correctness references for kiln, run on the GPU machine (device tool).

1. `make`: a seeded random-weight checkpoint with the exact Qwen3.5-4B shape in the
   official layout (`model.language_model.*`, tied embeddings, a tiny vision tower whose
   tensors the loader must skip, MTP tensors), bf16, written with transformers.
2. `refs`: for N prompts of 16..2000 random tokens, HF transformers in fp32 decodes
   a greedy continuation (free-running); then HF fp32 and HF bf16 run teacher-forced over
   prompt + that continuation and we keep, at every continuation position, the top-1 id,
   the fp32 top-2 margin and the logits (fp32 on disk, for the engine comparison).
3. `compare`: reads our engine's logits file (same positions, written by
   `kiln eval-logits`) and reports: logits relative error against fp32 (ours vs HF bf16's
   own), teacher-forced top-1 agreement with fp32 bucketed by the fp32 top-2 margin
   (> 0, > 0.05, > 0.2, > 0.5), and free-running greedy match.

Requires torch + transformers >= 5 with Qwen3.5 (the device image has both).
"""
import argparse, json, os, time
import numpy as np
import torch

TEXT = dict(
    hidden_size=2560, intermediate_size=9216, num_hidden_layers=32,
    layer_types=(["linear_attention"] * 3 + ["full_attention"]) * 8,
    num_attention_heads=16, num_key_value_heads=4, head_dim=256,
    linear_num_key_heads=16, linear_num_value_heads=32, linear_key_head_dim=128,
    linear_value_head_dim=128, linear_conv_kernel_dim=4, vocab_size=248320,
    rms_norm_eps=1e-6, max_position_embeddings=262144, attn_output_gate=True,
    rope_parameters={"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25,
                     "mrope_section": [11, 11, 10], "mrope_interleaved": True},
    eos_token_id=248044, mtp_num_hidden_layers=1, tie_word_embeddings=True, dtype="bfloat16",
)
VALID_VOCAB = 248077


def make(out, seed):
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration
    from safetensors.torch import save_file
    torch.manual_seed(seed)
    cfg = Qwen3_5Config(text_config=TEXT, vision_config=dict(depth=1, hidden_size=64, intermediate_size=128,
                        num_heads=2, out_hidden_size=2560), tie_word_embeddings=True)
    with torch.device("cuda"):
        model = Qwen3_5ForConditionalGeneration(cfg).to(torch.bfloat16)
    g = torch.Generator(device="cuda").manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            # Norm weights, A_log, dt_bias, conv: away from their init values.
            if name.endswith("norm.weight") or "A_log" in name or "dt_bias" in name or "conv1d" in name:
                p.add_(torch.randn(p.shape, generator=g, device="cuda", dtype=torch.float32).to(p.dtype) * 0.1)
        # The official checkpoint's dtype mix: linear_attn.A_log and linear_attn.norm.weight
        # are stored F32, everything else BF16 (the values stay bf16-exact, so HF's bf16
        # and fp32 loads see the same numbers as before).
        for name, p in model.named_parameters():
            if name.endswith("linear_attn.A_log") or name.endswith("linear_attn.norm.weight"):
                p.data = p.data.float()
    model.save_pretrained(out, max_shard_size="2GB")
    # transformers does not create the MTP head; add it as its own shard.
    H = 2560
    def r(*s):
        return (torch.randn(*s, generator=g, device="cuda") * 0.02).to(torch.bfloat16).cpu()
    mtp = {"mtp.pre_fc_norm_embedding.weight": r(H), "mtp.pre_fc_norm_hidden.weight": r(H),
           "mtp.fc.weight": r(H, 2 * H), "mtp.norm.weight": r(H)}
    p = "mtp.layers.0."
    mtp.update({p + "self_attn.q_proj.weight": r(2 * 16 * 256, H), p + "self_attn.k_proj.weight": r(4 * 256, H),
                p + "self_attn.v_proj.weight": r(4 * 256, H), p + "self_attn.o_proj.weight": r(H, 16 * 256),
                p + "self_attn.q_norm.weight": r(256), p + "self_attn.k_norm.weight": r(256),
                p + "mlp.gate_proj.weight": r(9216, H), p + "mlp.up_proj.weight": r(9216, H),
                p + "mlp.down_proj.weight": r(H, 9216), p + "input_layernorm.weight": r(H),
                p + "post_attention_layernorm.weight": r(H)})
    save_file(mtp, os.path.join(out, "model-mtp.safetensors"), metadata={"format": "pt"})
    idx_path = os.path.join(out, "model.safetensors.index.json")
    idx = json.load(open(idx_path))
    idx["weight_map"].update({k: "model-mtp.safetensors" for k in mtp})
    json.dump(idx, open(idx_path, "w"), indent=2)
    print(f"checkpoint written to {out}")


def prompts(n, seed):
    rng = np.random.default_rng(seed)
    lens = np.unique(np.linspace(16, 2000, n).astype(int))
    return [rng.integers(0, VALID_VOCAB, size=int(L)).tolist() for L in lens]


def load(path, dtype):
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map="cuda")
    return m.eval()


@torch.no_grad()
def refs(ckpt, out, n, new_tokens, seed):
    ps = prompts(n, seed)
    fp32 = load(ckpt, torch.float32)
    conts = []
    for p in ps:
        ids = torch.tensor([p], device="cuda")
        g = fp32.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        conts.append(g[0, len(p):].tolist())
    result = {"prompts": ps, "continuations": conts}
    for name, model in (("fp32", fp32), ("bf16", None)):
        if model is None:
            del fp32
            torch.cuda.empty_cache()
            model = load(ckpt, torch.bfloat16)
        logits_all = []
        for p, c in zip(ps, conts):
            ids = torch.tensor([p + c], device="cuda")
            lg = model(ids).logits[0, len(p) - 1:len(p) + len(c)].float()  # rows predicting c[0..] and one more
            lg[:, VALID_VOCAB:] = -float("inf")
            logits_all.append(lg.cpu().numpy())
        np.save(os.path.join(out, f"hf_{name}.npy"), np.concatenate(logits_all))
    json.dump(result, open(os.path.join(out, "cases.json"), "w"))
    print(f"references for {len(ps)} prompts written to {out}")


def compare(out, ours_path):
    cases = json.load(open(os.path.join(out, "cases.json")))
    f32 = np.load(os.path.join(out, "hf_fp32.npy"), mmap_mode="r")
    b16 = np.load(os.path.join(out, "hf_bf16.npy"), mmap_mode="r")
    ours = np.fromfile(ours_path, dtype=np.float32).reshape(f32.shape)
    top2 = np.sort(f32, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    ref = f32.argmax(1)
    def relerr(a):
        a = np.where(np.isfinite(f32), a, 0); r = np.where(np.isfinite(f32), f32, 0)
        return float(np.linalg.norm(a - r) / np.linalg.norm(r))
    rep = {"positions": int(len(ref)), "rel_err_vs_fp32": {"ours": relerr(ours), "hf_bf16": relerr(b16)},
           "nan_in_ours": bool(np.isnan(ours[:, :VALID_VOCAB]).any()), "agreement_with_fp32": {}}
    for t in (0.0, 0.05, 0.2, 0.5):
        m = margin > t
        rep["agreement_with_fp32"][f">{t}"] = {"n": int(m.sum()),
            "ours": float((ours.argmax(1)[m] == ref[m]).mean()) if m.any() else None,
            "hf_bf16": float((b16.argmax(1)[m] == ref[m]).mean()) if m.any() else None}
    print(json.dumps(rep, indent=1))
    return rep


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["make", "refs", "compare"])
    ap.add_argument("--ckpt", default="/tmp/qwen35_4b_random")
    ap.add_argument("--out", default="/tmp/refs")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ours")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    t0 = time.time()
    if a.cmd == "make":
        make(a.ckpt, a.seed)
    elif a.cmd == "refs":
        refs(a.ckpt, a.out, a.n, a.new_tokens, a.seed)
    else:
        compare(a.out, a.ours)
    print(f"{a.cmd}: {time.time() - t0:.1f}s")
