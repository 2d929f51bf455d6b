#!/usr/bin/env python3
"""How much of a text's tokens a reduced draft vocabulary can propose.

`--speculative-draft-vocab N` makes the MTP draft an argmax over token ids below N: the
draft's lm_head reads N rows instead of the whole 248,320-row table (docs/perf.md: 3 draft
steps take 2.40 ms over the whole table and 0.78 ms over 32768 rows on an H100). A token at
or above N can never be drafted, so its position ends the accepted run. This script counts,
per language sample and per N, the fraction of tokens below N with the bundled Qwen3.5
tokenizer (the ids are not in frequency order past the old Qwen2 vocabulary: 151,643
onwards are Qwen3.5's additions, mostly Latin-script European words, Cyrillic, Arabic,
Hangul and Thai).

    python3 -m venv target/venv-tok && target/venv-tok/bin/pip install tokenizers
    target/venv-tok/bin/python scripts/draft_vocab_coverage.py [FILE ...]
"""
import os
import sys

from tokenizers import Tokenizer

LIMITS = (32768, 65536, 131072, 151643)
SAMPLES = {
    "en": "The history of the bicycle begins in the early nineteenth century, when inventors in Europe first tried to "
          "build a machine that a person could ride by pushing against the ground. Over the following decades, engineers "
          "added pedals, chains and pneumatic tires, and the bicycle became one of the most popular means of transport in "
          "the world. Today millions of people ride to work every day, and cities are building new lanes to keep them safe.",
    "zh": "自行车的历史始于十九世纪初，当时欧洲的发明家们第一次尝试制造一种人们可以通过蹬地来骑行的机器。在随后的几十年里，"
          "工程师们加上了踏板、链条和充气轮胎，自行车成为世界上最受欢迎的交通工具之一。如今，每天都有数百万人骑车上班，"
          "城市也在修建新的车道来保障他们的安全。",
    "code": "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n"
            "if __name__ == '__main__':\n    print([fibonacci(i) for i in range(20)])\n",
    "math": "Let x be a real number such that x^2 - 5x + 6 = 0. Then (x - 2)(x - 3) = 0, so x = 2 or x = 3. The sum of "
            "the roots is 5 and the product is 6, as Vieta's formulas predict.",
    "fr": "L'histoire de la bicyclette commence au début du dix-neuvième siècle, lorsque des inventeurs européens ont essayé "
          "pour la première fois de construire une machine qu'une personne pouvait conduire en poussant contre le sol. "
          "Aujourd'hui, des millions de personnes se rendent au travail à vélo chaque jour.",
    "de": "Die Geschichte des Fahrrads beginnt im frühen neunzehnten Jahrhundert, als Erfinder in Europa zum ersten Mal "
          "versuchten, eine Maschine zu bauen, die eine Person fahren konnte, indem sie sich vom Boden abstieß. Heute fahren "
          "Millionen Menschen jeden Tag mit dem Rad zur Arbeit.",
    "es": "La historia de la bicicleta comienza a principios del siglo diecinueve, cuando los inventores de Europa intentaron "
          "por primera vez construir una máquina que una persona pudiera montar empujando contra el suelo. Hoy millones de "
          "personas van al trabajo en bicicleta cada día.",
    "ru": "История велосипеда начинается в начале девятнадцатого века, когда изобретатели в Европе впервые попытались "
          "построить машину, на которой человек мог бы ездить, отталкиваясь от земли. Сегодня миллионы людей каждый день "
          "ездят на работу на велосипеде.",
    "ja": "自転車の歴史は十九世紀初頭に始まります。ヨーロッパの発明家たちが、地面を蹴って乗ることのできる機械を初めて作ろうと"
          "しました。今日では、何百万人もの人々が毎日自転車で通勤しています。",
}


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    tok = Tokenizer.from_file(os.path.join(root, "assets", "qwen3_5", "tokenizer.json"))
    texts = dict(SAMPLES)
    for path in sys.argv[1:]:
        with open(path, encoding="utf-8") as f:
            texts[os.path.basename(path)] = f.read()
    print(f"{'text':>12} {'tokens':>7} " + " ".join(f"{'<' + str(n):>8}" for n in LIMITS))
    for name, text in texts.items():
        ids = tok.encode(text).ids
        cover = [sum(i < n for i in ids) / len(ids) for n in LIMITS]
        print(f"{name:>12} {len(ids):>7} " + " ".join(f"{c:>8.3f}" for c in cover))


if __name__ == "__main__":
    main()
