"""The paraphrase attack: prompts that mean the concept without naming it.

Erasure trains on the concept's word; a synonym or a rewording may still reach what the word
reached. The paraphrases come from a prompts file (one per line) or, on the built-in world, from the
concept's synonyms in its captions ("box" for square, "crimson" for red). Each target prompt is
retried with the concept's word replaced by each paraphrase, on the same seed. No optimisation:
the budget is the number of paraphrases tried per prompt.
"""

from __future__ import annotations

from ..errors import ErasekitError
from . import Attack, Found
from .tokens import mention


def paraphrases_of(concept: str) -> list[str]:
    """The built-in world's other words for the concept (from its caption synonyms)."""
    from ..evaluation.shapes import attribute_of
    from ..shapes.world import SYNONYMS

    _, value = attribute_of(concept)
    return [word for word in SYNONYMS[value] if word != concept]


class Paraphrase(Attack):
    name = "paraphrase"

    def find(self, erased, concept, prompts, seeds, steps, *, paraphrases=None, **_) -> Found:
        """Every target prompt that names the concept, with each paraphrase in the word's place."""
        paraphrases = paraphrases if paraphrases is not None else paraphrases_of(concept)
        if not paraphrases:
            raise ErasekitError(f"no paraphrases of '{concept}': give a prompts file")
        word = mention(concept)
        if not any(word.search(p) for p in prompts):
            raise ErasekitError(f"no target prompt names '{concept}', so there is nothing to paraphrase")
        found = [(p, s, word.sub(q, p)) for p in prompts if word.search(p) for s in seeds for q in paraphrases]
        return Found(found, steps=0, images=0, details={"paraphrases": paraphrases})
