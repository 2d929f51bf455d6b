"""The MTP head for the fixture scripts: its parameter layout (`MtpModule`, as the real
checkpoints name `mtp.*`) and a torch reference of its forward pass as SGLang and vLLM run
Qwen3.5 MTP (transformers does not run `mtp.*`), which writes `expected_mtp.*`: chained draft
logits for every case of a fixture model. Used by make_fixtures.py (also `--mtp-only`)."""
import copy
import json
import os

import torch
import transformers
from safetensors.torch import save_file
from torch import nn
from transformers import Qwen3_5ForCausalLM, Qwen3_5ForConditionalGeneration
from transformers.models.qwen3_5 import modeling_qwen3_5 as mq

from fixture_common import dumps_compact, read_checkpoint, top2_margin


class MtpModule(nn.Module):
    """The `mtp.*` block of the real checkpoints, built from HF's own layer classes so the names
    and shapes match a regular full-attention layer exactly. transformers does not implement MTP
    (it drops `mtp.*` on load); the names follow vLLM's and SGLang's qwen3_5_mtp loaders."""

    def __init__(self, text_cfg):
        super().__init__()
        h = text_cfg.hidden_size
        cfg = copy.deepcopy(text_cfg)  # one full-attention decoder layer of the same shape
        cfg.num_hidden_layers, cfg.layer_types = 1, ["full_attention"]
        self.pre_fc_norm_embedding = mq.Qwen3_5RMSNorm(h, eps=text_cfg.rms_norm_eps)
        self.pre_fc_norm_hidden = mq.Qwen3_5RMSNorm(h, eps=text_cfg.rms_norm_eps)
        self.fc = nn.Linear(2 * h, h, bias=False)  # weight [h, 2h]; input is cat(embed, hidden)
        self.layers = nn.ModuleList([mq.Qwen3_5DecoderLayer(cfg, 0)])
        self.norm = mq.Qwen3_5RMSNorm(h, eps=text_cfg.rms_norm_eps)


MTP_STEPS = 3  # chained draft steps per start (SGLang's usual --speculative-num-steps)
MTP_START_OFFSETS = [0, 9, 25]  # draft starts: tokens fed = L + offset (0: right after prefill)


def checkpoint_mtp_tensors(model_dir):
    """The `mtp.*` tensors of a checkpoint as float32 (bf16 values upcast), prefix stripped."""
    return {k[len("mtp."):]: v.float() for k, v in read_checkpoint(model_dir).items() if k.startswith("mtp.")}


class MtpReference(nn.Module):
    """The MTP head as SGLang's `Qwen3_5ForCausalLMMTP` and vLLM's `Qwen3_5MTP` run it, built
    from HF's own modules: for the pair (h_t, x_{t+1}), h_t the main model's final-normed hidden
    state, u = fc(cat[pre_fc_norm_embedding(embed(x_{t+1})), pre_fc_norm_hidden(h_t)]) (embedding
    half first); then HF's one-layer Qwen3_5TextModel (`mtp.layers.0` at RoPE position t, causal
    attention over the pairs before it, `mtp.norm` as its final norm); logits = tied lm_head."""

    def __init__(self, text_cfg, embed, mtp):
        super().__init__()
        self.heads = MtpModule(text_cfg)
        self.heads.load_state_dict({k: v for k, v in mtp.items()})
        cfg = copy.deepcopy(text_cfg)
        cfg.num_hidden_layers, cfg.layer_types = 1, ["full_attention"]
        cfg._attn_implementation = "eager"
        self.body = mq.Qwen3_5TextModel(cfg).eval()
        body_sd = {"embed_tokens.weight": embed, "norm.weight": mtp["norm.weight"]}
        body_sd.update({k: v for k, v in mtp.items() if k.startswith("layers.0.")})
        missing, unexpected = self.body.load_state_dict(body_sd, strict=False)
        assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
        self.embed = embed

    def pair_inputs(self, tokens, hidden):
        e = self.heads.pre_fc_norm_embedding(self.embed[tokens])
        g = self.heads.pre_fc_norm_hidden(hidden)
        return self.heads.fc(torch.cat([e, g], dim=-1))

    def run(self, u):
        """mtp.norm(layer(u)) for rows u at positions 0.. (causal)."""
        return self.body(inputs_embeds=u[None], use_cache=False).last_hidden_state[0]


@torch.no_grad()
def mtp_case(ref, text_model, seq, pos):
    """Chained draft logits [MTP_STEPS, V] with `pos` tokens fed and seq[pos] the next token."""
    h = text_model(input_ids=torch.tensor([seq[:pos]]), use_cache=False).last_hidden_state[0]
    u = ref.pair_inputs(torch.tensor(seq[1 : pos + 1]), h)  # pairs (h_t, x_{t+1}), t = 0..pos-1
    rows, drafts = [], []
    for _ in range(MTP_STEPS):
        y = ref.run(u)
        logits = y[-1] @ ref.embed.T
        d = int(logits.argmax())
        rows.append(logits)
        drafts.append(d)
        # Chained step: the MTP's own output and draft, at the next position.
        u = torch.cat([u, ref.pair_inputs(torch.tensor([d]), y[-1:])])
    return torch.stack(rows), drafts


def write_mtp_expected(model_dir, name, model, text_cfg):
    """`expected_mtp.json` + `expected_mtp.safetensors`: chained draft logits for each case."""
    text_model = model.model.language_model if hasattr(model.model, "language_model") else model.model
    embed = text_model.embed_tokens.weight.detach().float()
    ref = MtpReference(text_cfg, embed, checkpoint_mtp_tensors(model_dir)).eval()
    with open(os.path.join(model_dir, "expected.json")) as f:
        doc = json.load(f)
    tensors, cases = {}, []
    for case in doc["cases"]:
        seq = case["prompt_ids"] + case["greedy_ids"]
        L = len(case["prompt_ids"])
        starts = []
        for i, off in enumerate(MTP_START_OFFSETS):
            pos = L + off
            logits, drafts = mtp_case(ref, text_model, seq, pos)
            tensors[f"{case['name']}.mtp{i}.draft_logits"] = logits.float().contiguous()
            starts.append({"pos": pos, "next": seq[pos], "draft_ids": drafts, "min_top2_margin": round(top2_margin(logits), 6)})
        cases.append({"name": case["name"], "starts": starts})
        print(f"  {name}/{case['name']}: MTP drafts " + " ".join(str(s["draft_ids"]) for s in starts))
    save_file(tensors, os.path.join(model_dir, "expected_mtp.safetensors"), metadata={"format": "pt"})
    out = {"model": name, "steps": MTP_STEPS, "cases": cases,
           "transformers_version": transformers.__version__, "torch_version": torch.__version__}
    with open(os.path.join(model_dir, "expected_mtp.json"), "w") as f:
        f.write(dumps_compact(out))


def mtp_only(out_root):
    """Writes only the MTP references, from the checkpoints already in `out_root`."""
    for name, cls in (("tiny_official", Qwen3_5ForConditionalGeneration), ("tiny_text", Qwen3_5ForCausalLM)):
        d = os.path.join(out_root, name)
        model = cls.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
        text_cfg = model.config.text_config if hasattr(model.config, "text_config") else model.config
        write_mtp_expected(d, name, model, text_cfg)
