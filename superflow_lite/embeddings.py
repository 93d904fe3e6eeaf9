"""Prompt embeddings: computed once per prompt, cached on the CPU (LRU).

SuperFlow revisits prompts, and the text encoders are frozen, so an embedding never
changes: recomputing it (T5-XXL on SD3.5-M) is pure waste.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch


@dataclass
class PromptEmbeds:
    """embeds: [B, L, D] token embeddings; pooled: [B, P] pooled CLIP projections."""

    embeds: torch.Tensor
    pooled: torch.Tensor

    def to(self, device: torch.device, dtype: torch.dtype) -> "PromptEmbeds":
        return PromptEmbeds(self.embeds.to(device, dtype), self.pooled.to(device, dtype))

    def index(self, rows: torch.Tensor | list[int]) -> "PromptEmbeds":
        return PromptEmbeds(self.embeds[rows], self.pooled[rows])

    def repeat(self, n: int) -> "PromptEmbeds":
        """A single prompt's embeddings as a batch of n (a view: no copy)."""
        return PromptEmbeds(self.embeds.expand(n, -1, -1), self.pooled.expand(n, -1))


class PromptEncoder:
    """Encode prompts with the pipeline's text encoders, caching results by prompt."""

    def __init__(self, pipe, device: torch.device, max_sequence_length: int, cache_size: int = 256):
        self.pipe = pipe
        self.device = device
        self.max_sequence_length = max_sequence_length
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    @torch.no_grad()
    def _encode_uncached(self, prompts: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            prompt_3=None,
            device=self.device,
            do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
        )
        return [(embeds[i].cpu(), pooled[i].cpu()) for i in range(len(prompts))]

    def encode(self, prompts: list[str]) -> PromptEmbeds:
        """Embeddings for `prompts` (in order), stacked on the CPU."""
        # One prompt per encoder pass: a batch's numerics (CLIP's pooled output among them)
        # depend on which prompts share it, so encoding each alone makes a prompt's embedding
        # the same whatever else was missing. A resumed run, whose cache starts empty, then
        # repeats an uninterrupted one bit for bit.
        for prompt in dict.fromkeys(p for p in prompts if p not in self._cache):
            self._cache[prompt] = self._encode_uncached([prompt])[0]
        for prompt in prompts:
            self._cache.move_to_end(prompt)
        out = PromptEmbeds(
            torch.stack([self._cache[p][0] for p in prompts]),
            torch.stack([self._cache[p][1] for p in prompts]),
        )
        while len(self._cache) > max(self.cache_size, len(prompts)):
            self._cache.popitem(last=False)
        return out

    def negative(self) -> PromptEmbeds:
        """The empty prompt: the unconditional branch of CFG."""
        return self.encode([""])
