"""A small but real CLIP BPE tokenizer for the shapes world.

The vocabulary holds CLIP's 512 byte symbols (with and without the end-of-word mark) plus one
merge chain per word of the world, so every caption word is a single token and any other text
still tokenises, into byte pieces. It is saved and loaded as a standard `CLIPTokenizer` folder.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from transformers import CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from .world import vocabulary_words

MAX_LENGTH = 77  # as in Stable Diffusion, so that every code path is the same for both


def _letter_runs(words: list[str]) -> list[str]:
    # CLIP's pre-tokenizer splits "five-pointed" into "five", "-", "pointed": merge only letter runs.
    return sorted({run for word in words for run in re.findall(r"[a-z]+", word)})


def build_vocab_and_merges(words: list[str]) -> tuple[dict[str, int], list[str]]:
    symbols = list(bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols]
    merges: list[str] = []
    known = set(vocab_list)
    for word in _letter_runs(words):
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        left = pieces[0]
        for right in pieces[1:]:
            merged = left + right
            if merged not in known:
                merges.append(f"{left} {right}")
                vocab_list.append(merged)
                known.add(merged)
            left = merged
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(vocab_list)}, merges


def save_tokenizer(directory: Path) -> CLIPTokenizer:
    """Write vocab.json, merges.txt and the tokenizer config to `directory`, and load it back."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab_and_merges(vocabulary_words())
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    # Build from the in-memory vocabulary (the file arguments are ignored in transformers 5).
    pairs = [tuple(m.split(" ")) for m in merges]
    tokenizer = CLIPTokenizer(vocab=vocab, merges=pairs, model_max_length=MAX_LENGTH)
    tokenizer.save_pretrained(directory)
    return CLIPTokenizer.from_pretrained(directory)
