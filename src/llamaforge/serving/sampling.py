"""Per-request sampling for the batch scheduler: the next token from one row's logits.

Contract: :class:`Sampler` picks tokens as ``model.generate`` would for the same
:class:`~llamaforge.config.GenerationConfig` — repetition penalty, then greedy or
temperature / top_k / top_p sampling — with a private ``torch.Generator`` seeded from
``sampling_seed``, so a seeded request gives the same text whatever else is in the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from llamaforge.config import GenerationConfig


class Sampler:
    """Picks one request's tokens; holds its random generator (None when greedy)."""

    def __init__(self, gen: GenerationConfig) -> None:
        import torch

        self.gen = gen
        self.sample = gen.do_sample if gen.do_sample is not None else gen.temperature > 0
        self.generator: torch.Generator | None = None
        if self.sample:
            self.generator = torch.Generator()
            if gen.sampling_seed is not None:
                self.generator.manual_seed(gen.sampling_seed)
            else:
                self.generator.seed()

    def pick(self, logits: torch.Tensor, prompt_ids: Sequence[int], ids: Sequence[int]) -> int:
        """The next token from a row's logits ([V], float32), as ``generate`` would.

        ``prompt_ids`` and ``ids`` (generated so far) are the tokens the repetition penalty
        applies to.
        """
        import torch

        gen = self.gen
        if gen.repetition_penalty != 1.0:
            seen = torch.tensor([*prompt_ids, *ids], dtype=torch.long)
            score = logits[seen]
            logits = logits.clone()
            logits[seen] = torch.where(
                score < 0, score * gen.repetition_penalty, score / gen.repetition_penalty
            )
        if not self.sample:
            return int(logits.argmax())
        logits = logits / gen.temperature
        if gen.top_k > 0:
            kth = torch.topk(logits, min(gen.top_k, logits.shape[-1])).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if gen.top_p < 1.0:
            sorted_logits, order = torch.sort(logits)
            remove = sorted_logits.softmax(-1).cumsum(-1) <= 1 - gen.top_p
            remove[-1] = False  # always keep the most likely token
            logits = logits.masked_fill(remove.scatter(0, order, remove), float("-inf"))
        probs = logits.softmax(-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))
