"""A `CLIPTokenizer` whose vocabulary has one token per word of the toy world (rare tokens included).

The BPE merges are learned here by a deterministic greedy loop (ties broken by the pair's text), not by
a library trainer whose ties vary between runs, so token ids are the same in every build.
"""

from __future__ import annotations

from collections import Counter
from itertools import pairwise
from pathlib import Path

from transformers import CLIPTokenizer

from steerguide.toyworld.world import vocabulary

MAX_LENGTH = 24  # the longest caption has 19 words, plus start and end
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
_ALPHABET = "abcdefghijklmnopqrstuvwxyz"


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Greedy BPE over `words` (each counted once) until every word is one symbol."""
    split = {w: tuple(w[:-1]) + (w[-1] + "</w>",) for w in words}
    merges: list[tuple[str, str]] = []
    while True:
        pairs = Counter(p for syms in split.values() for p in pairwise(syms))
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for w, syms in split.items():
            out, i = [], 0
            while i < len(syms):
                if i + 1 < len(syms) and (syms[i], syms[i + 1]) == best:
                    out.append(syms[i] + syms[i + 1])
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            split[w] = tuple(out)


def build_tokenizer() -> CLIPTokenizer:
    """The toy world's tokenizer: letters, then learned merges, then the two special tokens."""
    merges = learn_merges(vocabulary())
    tokens = list(_ALPHABET) + [c + "</w>" for c in _ALPHABET]
    tokens += [a + b for a, b in merges if a + b not in tokens]
    tokens += [BOS, EOS]
    vocab = {t: i for i, t in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_LENGTH,
                         unk_token=EOS, bos_token=BOS, eos_token=EOS, pad_token=EOS)


def save_tokenizer(folder: str | Path) -> CLIPTokenizer:
    tok = build_tokenizer()
    tok.save_pretrained(str(folder))
    return tok


def word_ids(tokenizer: CLIPTokenizer) -> dict[str, int]:
    """The id of each world word; raises if a word does not map to exactly one token."""
    out = {}
    for w in vocabulary():
        ids = tokenizer(w, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"word {w!r} tokenizes to {len(ids)} tokens")
        out[w] = ids[0]
    return out
