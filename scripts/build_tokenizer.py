#!/usr/bin/env python3
"""Build assets/qwen3_5/tokenizer.json (and tokenizer_config.json) for tests and the demo model.

A real Qwen3.5 checkpoint always ships its own tokenizer.json: kiln loads that one and never
rebuilds it. This script exists because the official tokenizer.json / merges.txt are not
available here; only the official vocab.json (byte-exact) is. It reproduces the official
pipeline (transformers models/qwen3_5/tokenization_qwen3_5.py):

  normalizer      NFC
  pre_tokenizer   Sequence[Split(Regex(QWEN35_REGEX), isolated), ByteLevel(no prefix space, no regex)]
  model           BPE, byte_fallback=false, ignore_merges=false, no unk
  decoder         ByteLevel
  added tokens    ids 248044..248076 from special_tokens.json (normalized=false, special flags as listed)

Merges are derived from the ranks (rank == id): for each token, run byte-pair merging over
its own bytes using only lower-ranked tokens; when exactly two pieces remain, those two
pieces form the token's merge. This yields 247,556 merges (the official file has 247,587;
see ../shared/qwen3_5/README.md and rank_unreachable_tokens.json for the 232 tokens this
cannot build). Every vector in token_vectors.json is reproduced.

Usage (from the repo root):
    /work/pyenv/bin/python scripts/build_tokenizer.py [--src ../shared/qwen3_5] [--out assets/qwen3_5]

The output is deterministic; running it again must leave `git diff assets/` empty.
Only the Python standard library is needed.
"""
import argparse
import json
import os
import sys

QWEN35_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def bytes_to_unicode():
    """GPT-2's byte -> printable unicode character table (byte-level BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def derive_merges(vocab):
    """vocab: unicode token -> id (id == rank). Returns [(left, right)] ordered by result rank."""
    b2u = bytes_to_unicode()
    u2b = {u: b for b, u in b2u.items()}
    ranks = {}
    for tok, idx in vocab.items():
        ranks[bytes(u2b[c] for c in tok)] = idx
    merges = []
    unreachable = []
    for token_bytes, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token_bytes) == 1:
            continue
        parts = [token_bytes[i : i + 1] for i in range(len(token_bytes))]
        while len(parts) > 2:
            best_i, best_r = None, None
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < rank and (best_r is None or r < best_r):
                    best_i, best_r = i, r
            if best_i is None:
                break
            parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
        if len(parts) == 2:
            merges.append(
                ("".join(b2u[b] for b in parts[0]), "".join(b2u[b] for b in parts[1]))
            )
        else:
            unreachable.append(rank)
    return merges, unreachable


def added_token_entry(t):
    return {
        "id": t["id"],
        "content": t["content"],
        "single_word": t["single_word"],
        "lstrip": t["lstrip"],
        "rstrip": t["rstrip"],
        "normalized": t["normalized"],
        "special": t["special"],
    }


def build_tokenizer_json(vocab, merges, added):
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [added_token_entry(t) for t in added],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": QWEN35_REGEX},
                    "behavior": "Isolated",
                    "invert": False,
                },
                {
                    "type": "ByteLevel",
                    "add_prefix_space": False,
                    "trim_offsets": False,
                    "use_regex": False,
                },
            ],
        },
        "post_processor": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": False,
            "use_regex": False,
        },
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": False,
            "use_regex": False,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [list(m) for m in merges],
        },
    }


def build_tokenizer_config(added, chat_template):
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(t["id"]): {k: v for k, v in added_token_entry(t).items() if k != "id"} for t in added
        },
        "additional_special_tokens": None,
        "bos_token": None,
        "chat_template": chat_template,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 262144,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
        "image_token": "<|image_pad|>",
        "video_token": "<|video_pad|>",
        "vision_bos_token": "<|vision_start|>",
        "vision_eos_token": "<|vision_end|>",
        "audio_bos_token": "<|audio_start|>",
        "audio_eos_token": "<|audio_end|>",
        "audio_token": "<|audio_pad|>",
    }


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(here)
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", default=os.path.join(repo, "..", "shared", "qwen3_5"))
    ap.add_argument("--out", default=os.path.join(repo, "assets", "qwen3_5"))
    args = ap.parse_args()

    with open(os.path.join(args.src, "vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    with open(os.path.join(args.src, "special_tokens.json"), encoding="utf-8") as f:
        special = json.load(f)
    with open(os.path.join(args.src, "chat_template.jinja"), encoding="utf-8") as f:
        chat_template = f.read()
    added = sorted(special["added_tokens"], key=lambda t: t["id"])
    assert len(vocab) == 248044 and sorted(vocab.values()) == list(range(248044))
    assert [t["id"] for t in added] == list(range(248044, 248077))

    merges, unreachable = derive_merges(vocab)
    print(f"{len(merges)} merges, {len(unreachable)} rank-unreachable tokens", file=sys.stderr)
    with open(os.path.join(args.src, "rank_unreachable_tokens.json"), encoding="utf-8") as f:
        expected = sorted(t["id"] for t in json.load(f)["tokens"])
    if expected != sorted(unreachable):
        sys.exit("error: unreachable tokens differ from rank_unreachable_tokens.json")

    os.makedirs(args.out, exist_ok=True)
    tok = build_tokenizer_json(vocab, merges, added)
    with open(os.path.join(args.out, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tok, f, ensure_ascii=False, separators=(",", ":"))
    cfg = build_tokenizer_config(added, chat_template)
    with open(os.path.join(args.out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, ensure_ascii=False, indent=2)
        f.write("\n")
    print(f"wrote {args.out}/tokenizer.json and tokenizer_config.json", file=sys.stderr)


if __name__ == "__main__":
    main()
