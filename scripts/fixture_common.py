"""Helpers shared by the fixture scripts (make_fixtures.py, fixture_mtp.py): reading a
checkpoint directory's tensors, the smallest top-2 logit margin, and the stable JSON layout
of the expected-output files."""
import json
import os
import re

import torch
from safetensors.torch import load_file


def read_checkpoint(model_dir):
    """Every tensor of a checkpoint directory (sharded through its index, or one
    `model.safetensors`), by stored name."""
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    out = {}
    for fname in files:
        out.update(load_file(os.path.join(model_dir, fname)))
    return out


def top2_margin(logits):
    t = torch.topk(logits.float(), 2, dim=-1).values
    return (t[..., 0] - t[..., 1]).min().item()


def dumps_compact(doc):
    """Indented JSON with every list of plain numbers folded onto one line; stable across runs."""
    text = json.dumps(doc, indent=2)
    text = re.sub(
        r"\[\s*(-?[0-9][-0-9.eE+]*(?:\s*,\s*-?[0-9][-0-9.eE+]*)*)\s*\]",
        lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]",
        text,
    )
    assert json.loads(text) == doc
    return text + "\n"
