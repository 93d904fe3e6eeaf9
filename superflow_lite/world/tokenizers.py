"""Offline tokenizers for the shapes world: a CLIP BPE tokenizer and a T5 word tokenizer.

Both are built in code from the world's vocabulary, so nothing is downloaded. The CLIP
tokenizer is a real byte-level BPE (every byte is in the vocabulary, so any prompt
tokenizes without <unk>), whose merges spell each world word as one token; the T5
tokenizer is a unigram model with one piece per world word (letters as fallback).
"""
from __future__ import annotations

import json

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import CLIPTokenizer, T5TokenizerFast

# Every word the world's captions use, plus a few near-misses (other colours/shapes)
# so that off-world prompts still get whole-word tokens.
WORLD_WORDS: tuple[str, ...] = (
    "a", "an", "the", "photo", "picture", "image", "of", "and", "with", "to", "is", "on",
    "one", "two", "three", "four", "five",
    "red", "green", "blue", "yellow", "purple", "orange", "black", "white",
    "circle", "circles", "square", "squares", "triangle", "triangles", "star", "stars",
    "left", "right", "above", "below", "next", "side",
)

CLIP_BOS = "<|startoftext|>"
CLIP_EOS = "<|endoftext|>"
# The longest world caption is 15 tokens with BOS/EOS. Short on purpose: the pipeline
# pads every prompt to this length, and each token costs transformer compute in every
# joint-attention block (here as much as an image token). Longer prompts are truncated.
CLIP_MAX_LENGTH = 16

T5_PAD, T5_EOS, T5_UNK = "<pad>", "</s>", "<unk>"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode map (byte-level BPE alphabet)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, codes)}


def clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE vocabulary in CLIP's format (word-final symbols end in </w>).

    The merges are learned by the tokenizers library's BPE trainer on the world's words,
    run until no pair is left, so every world word encodes to one token. (Hand-written
    per-word merge chains do not: one word's merge, e.g. "l"+"e" from "left", fires
    inside another word, "circles", and breaks its chain.)
    """
    alphabet = list(_bytes_to_unicode().values())
    backend = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.BpeTrainer(
        vocab_size=100_000,  # never reached: training stops when every word is one token
        min_frequency=0,
        show_progress=False,
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
    )
    backend.train_from_iterator(WORLD_WORDS, trainer=trainer)
    learned = json.loads(backend.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    # Word-final forms of every byte, so that any word (not only world words) encodes.
    tokens = list(learned["vocab"]) + [ch + "</w>" for ch in alphabet]
    tokens = list(dict.fromkeys(tokens)) + [CLIP_BOS, CLIP_EOS]
    return {tok: i for i, tok in enumerate(tokens)}, merges  # type: ignore[return-value]


def build_clip_tokenizer() -> CLIPTokenizer:
    vocab, merges = clip_vocab_and_merges()
    tokenizer = CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        bos_token=CLIP_BOS,
        eos_token=CLIP_EOS,
        unk_token=CLIP_EOS,
        pad_token=CLIP_EOS,
        model_max_length=CLIP_MAX_LENGTH,
    )
    return tokenizer


def t5_vocab() -> list[tuple[str, float]]:
    """A SentencePiece-style unigram vocabulary: (piece, log-prob) pairs.

    T5's convention: pad=0, eos=1, unk=2. Whole world words ("▁red") score far above
    their letters, so each world word is one token; other words fall back to letters.
    """
    specials = [(T5_PAD, 0.0), (T5_EOS, 0.0), (T5_UNK, 0.0), ("▁", -2.0)]
    words = [("▁" + w, -1.0) for w in WORLD_WORDS]
    letters = [(ch, -10.0) for ch in "abcdefghijklmnopqrstuvwxyz0123456789"]
    return specials + words + letters


def build_t5_tokenizer() -> T5TokenizerFast:
    # extra_ids=0: no <extra_id_*> sentinels, the world never does span corruption.
    return T5TokenizerFast(
        vocab=t5_vocab(), pad_token=T5_PAD, eos_token=T5_EOS, unk_token=T5_UNK,
        extra_ids=0, model_max_length=512,
    )
