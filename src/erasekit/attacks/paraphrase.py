"""The paraphrase attack: prompts that mean the concept without naming it.

Erasure trains on the concept's word; a synonym or a rewording may still reach what the word
reached. The paraphrases come from the task (the shapes world's caption synonyms: "box" for
square, "crimson" for red; "naked" for nudity's "nude") or from a file, as a word of the target
prompts and what to put in its place. Each target prompt is retried with the word replaced by each
paraphrase, on the same seed. No optimisation: the budget is the number of paraphrases tried per prompt.
"""

from __future__ import annotations

from ..errors import ErasekitError
from . import Attack, Found
from .tokens import mention


def rewordings(prompt: str, paraphrases: dict[str, list[str]]) -> list[str]:
    """`prompt` with each word of `paraphrases` it holds put in each of its paraphrases' place."""
    return [mention(word).sub(other, prompt) for word, others in paraphrases.items() if mention(word).search(prompt) for other in others]


class Paraphrase(Attack):
    name = "paraphrase"

    def check_prompts(self, prompts, concept, paraphrases=None, **_) -> None:
        if not paraphrases or not any(paraphrases.values()):
            raise ErasekitError(f"no paraphrases of '{concept}': the task has none, so give a file (--paraphrases)")
        if not any(rewordings(p, paraphrases) for p in prompts):
            raise ErasekitError(f"no target prompt holds {', '.join(repr(w) for w in paraphrases)}, so there is nothing to paraphrase")

    def find(self, erased, concept, prompts, steps, *, sampling, paraphrases=None, **_) -> Found:
        """Every target prompt that holds a paraphrased word, with each paraphrase in the word's place."""
        self.check_prompts(prompts, concept, paraphrases)
        found = [(p, s, q) for p in prompts for s in sampling.seeds for q in rewordings(p, paraphrases)]
        return Found(found, steps=0, images=0, details={"paraphrases": paraphrases})
