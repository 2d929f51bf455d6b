#!/usr/bin/env python3
"""What a decode GEMM input contract costs in accuracy, emulated on the CPU at full size.

kiln's decode GEMMs take fp32 x split into bf16 hi + lo (two MMAs, ~16 bits of x). A
contract with one MMA per product (x rounded to fp16: 11 bits, W converted bf16 -> fp16,
exact for |w| >= 2^-14) would halve the tensor work of the batch 32-256 GEMMs. Whether it
keeps issue 8's accuracy bar (logits rel err <= 1.1e-2 against HF fp32, top-1 agreement by
margin not below 98.2 / 99.8 / 100 / 100 %) is answered here before any kernel is written.

The model is HF transformers' Qwen3.5 at the real size with seeded random weights drawn as
scripts/gpu_reference.py draws them (bf16 values, the same perturbed norms / A_log / dt_bias /
conv), run in fp32 on the CPU, teacher-forced over random prompts plus a continuation. Each
variant rounds, as kiln's engine does:
  - every nn.Linear input: the prompt rows of a prompt longer than 64 tokens to bf16 (kiln's
    prefill feeds such chunks to cuBLASLt in bf16), every other row (kiln's decode rows,
    short prompts, and every row the lm_head reads: kiln gathers the logit rows into a
    decode GEMM) by the variant's rule;
  - K after RoPE and V to bf16 (kiln's paged KV cache).
Variants (long prompts' rows, the other rows): `hilo` (today: bf16, hi = bf16(x) + lo =
bf16(x - hi)), `hilo_pf16` (long prompts in fp16), `fp16_all` (fp16 for both), `kv_only`
(no GEMM input rounding: what the KV cache alone costs); for the other rows:
`bf16` (`KILN_ACT=bf16`, measured on the device: rel err 3.68e-2, agreement 90.9 %),
`fp16` (x rounded to fp16 after a per-row power-of-two scale that puts the row's largest
|x| in [2^14, 2^15): fp16's precision without its range), `fp16_w` (that, and W rounded to
fp16 too, for the subnormal weights). The reference is the same model with no rounding.
The device numbers for `hilo` and `bf16` (docs/perf.md) check the emulation itself.

Usage: python scripts/emulate_gemm_contract.py [--lens 64,160,320,480] [--cont 16]
Needs torch + transformers >= 5 (Qwen3.5) and ~20 GB of memory (fp32 weights).
"""
import argparse, json, os, sys, time
import numpy as np
import torch
import transformers.models.qwen3_5.modeling_qwen3_5 as mq
from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

# The model as scripts/gpu_reference.py makes it on the device (same shape and draws).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_reference import TEXT, VALID_VOCAB  # noqa: E402


def bf16(x):
    return x.to(torch.bfloat16).to(x.dtype)


def hilo(x):
    hi = bf16(x)
    return hi + bf16(x - hi)


def fp16_scaled(x):
    # A power of two per row: exact to apply and to undo, so only fp16's 11 bits remain.
    amax = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-30)
    e = 14 - torch.floor(torch.log2(amax))
    s = torch.exp2(e)
    return (x * s).to(torch.float16).to(x.dtype) / s


def fp16_plain(x):
    # No scale: fp16's own range, saturated at its largest finite value (as a kernel would
    # clamp before cvt.rn.f16), subnormal below 2^-14.
    return x.clamp(-65504.0, 65504.0).to(torch.float16).to(x.dtype)


def exact(x):
    return x


# variant: (GEMM inputs of long prompts' rows, of every other row, the KV cache, the
# prompt rows' q and probabilities in prefill attention). kiln today is `hilo`; its
# prefill attention splits q and P into bf16 hi + lo (`exact` here, ~16 bits).
RULES = {"hilo": (bf16, hilo, bf16, exact), "bf16": (bf16, bf16, bf16, exact), "fp16": (bf16, fp16_scaled, bf16, exact),
         "fp16_all": (fp16_scaled, fp16_scaled, bf16, exact), "hilo_pf16": (fp16_scaled, hilo, bf16, exact),
         "kv_only": (exact, exact, bf16, exact), "fp16_plain_all": (fp16_plain, fp16_plain, bf16, exact),
         "fp16_w": (bf16, fp16_scaled, bf16, exact),
         # One MMA per product in prefill attention too: q and P rounded, with a bf16 or an
         # fp16 KV cache (the operands of one MMA share a type).
         "hilo_qp_bf16": (bf16, hilo, bf16, bf16), "fp16_all_qp_bf16": (fp16_scaled, fp16_scaled, bf16, bf16),
         "fp16_all_kv16": (fp16_scaled, fp16_scaled, fp16_scaled, exact),
         "fp16_all_kv16_qp16": (fp16_scaled, fp16_scaled, fp16_scaled, fp16_scaled)}


class Emulation:
    """Rounds Linear inputs, K / V and the prompt rows' attention q and P by a variant's rules."""

    def __init__(self, model, prompt_len, rules):
        self.p, (self.prefill_rule, self.rule, kv, self.qp), self.handles = prompt_len, rules, []
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear):
                long_prompt = prompt_len > 64 and name != "lm_head"
                self.handles.append(mod.register_forward_pre_hook(self.round_long if long_prompt else self.round_all))
                if name.endswith("self_attn.v_proj"):
                    self.handles.append(mod.register_forward_hook(lambda m, i, o: kv(o)))
        self.rope, self.attn = mq.apply_rotary_pos_emb, mq.eager_attention_forward
        def rope_kv(q, k, cos, sin, *a, **kw):
            q, k = self.rope(q, k, cos, sin, *a, **kw)
            return q, kv(k)
        mq.apply_rotary_pos_emb = rope_kv
        mq.eager_attention_forward = self.attention

    def attention(self, module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        """Softmax attention as kiln's prefill kernel rounds it: the prompt rows' scaled q and
        unnormalised probabilities by the variant's rule, the sum of the unrounded ones."""
        k = mq.repeat_kv(key, module.num_key_value_groups)
        v = mq.repeat_kv(value, module.num_key_value_groups)
        q = query * scaling
        q = torch.cat([self.qp(q[:, :, :self.p]), q[:, :, self.p:]], dim=2)
        s = torch.matmul(q, k.transpose(2, 3))
        if attention_mask is not None:
            s = s + attention_mask
        e = torch.exp(s - s.amax(dim=-1, keepdim=True))
        l = e.sum(dim=-1, keepdim=True)
        e = torch.cat([self.qp(e[:, :, :self.p]), e[:, :, self.p:]], dim=2)
        out = torch.matmul(e, v) / l
        return out.transpose(1, 2).contiguous(), None

    def round_all(self, mod, args):
        return (self.rule(args[0]),) + tuple(args[1:])

    def round_long(self, mod, args):
        x = args[0]
        y = torch.empty_like(x)
        y[..., :self.p, :] = self.prefill_rule(x[..., :self.p, :])
        y[..., self.p:, :] = self.rule(x[..., self.p:, :])
        return (y,) + tuple(args[1:])

    def close(self):
        for h in self.handles:
            h.remove()
        mq.apply_rotary_pos_emb, mq.eager_attention_forward = self.rope, self.attn


def make_model(seed):
    torch.manual_seed(seed)
    cfg = Qwen3_5TextConfig(**TEXT)
    cfg._attn_implementation = "eager"  # the emulation replaces eager_attention_forward
    model = Qwen3_5ForCausalLM(cfg).float().eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "A_log" in name or "dt_bias" in name or "conv1d" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
            # Every stored value bf16-exact, as in the checkpoint (A_log / the gated norm are
            # F32 in the official files, but their values are drawn the same way).
            p.copy_(bf16(p))
    return model


@torch.no_grad()
def run(model, ids, p, rule):
    em = Emulation(model, p, RULES[rule]) if rule else None
    try:
        lg = model(torch.tensor([ids])).logits[0, p - 1:].float()
    finally:
        if em:
            em.close()
    lg[:, VALID_VOCAB:] = -float("inf")
    return lg.numpy()


def report(ref, ours):
    fin = np.isfinite(ref)
    a, r = np.where(fin, ours, 0), np.where(fin, ref, 0)
    top2 = np.sort(ref, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    agree = ours.argmax(1) == ref.argmax(1)
    rep = {"rel_err": float(np.linalg.norm(a - r) / np.linalg.norm(r)), "nan": bool(np.isnan(ours).any())}
    for t in (0.0, 0.05, 0.2, 0.5):
        m = margin > t
        rep[f">{t}"] = [int(m.sum()), float(agree[m].mean()) if m.any() else None]
    return rep


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lens", default="64,160,320,480")
    ap.add_argument("--cont", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", default="hilo,bf16,fp16")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.time()
    model = make_model(a.seed)
    print(f"model ready in {time.time() - t0:.0f} s", flush=True)
    rng = np.random.default_rng(a.seed)
    cases = [rng.integers(0, VALID_VOCAB, int(n) + a.cont).tolist() for n in a.lens.split(",")]
    lens = [int(n) for n in a.lens.split(",")]
    variants = a.variants.split(",")
    refs, outs = [], {v: [] for v in variants}
    w16 = None
    for ids, p in zip(cases, lens):
        refs.append(run(model, ids, p, None))
        for v in variants:
            if v == "fp16_w" and w16 is None:
                continue
            outs[v].append(run(model, ids, p, v))
        print(f"case {p} + {a.cont} done at {time.time() - t0:.0f} s", flush=True)
    if "fp16_w" in variants:
        # W through fp16 for every Linear but the prompt rows' (which stay bf16 W): the
        # decode rows' products only; emulated as a second pass with every Linear's W
        # rounded, prompt rows included (their W is bf16-exact anyway above 2^-14).
        with torch.no_grad():
            for mod in model.modules():
                if isinstance(mod, torch.nn.Linear):
                    for rows in mod.weight.split(4096):  # in place, a slice at a time (memory)
                        rows.copy_(rows.to(torch.float16).float())
        for ids, p in zip(cases, lens):
            outs["fp16_w"].append(run(model, ids, p, "fp16_w"))
    ref = np.concatenate(refs)
    result = {"positions": int(len(ref)), "lens": lens, "cont": a.cont, "seed": a.seed}
    for v in variants:
        result[v] = report(ref, np.concatenate(outs[v]))
    print(json.dumps(result, indent=1))
    if a.out:
        json.dump(result, open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
