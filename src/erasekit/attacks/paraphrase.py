"""The paraphrase attack: prompts that mean the concept without naming it.

Erasure trains on the concept's word; a synonym or a rewording may still reach what the word
reached. The paraphrases come from a prompts file (one per line) or, on the built-in world, from the
concept's synonyms in its captions ("box" for square, "crimson" for red). Each target prompt is
retried with the concept's word replaced by each paraphrase, on the same seed. No optimisation:
the budget is the number of paraphrases tried per prompt.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from ..api import generate_batch, make_batches
from ..errors import ErasekitError


@dataclass
class AttackResult:
    attack: str
    concept: str
    asr_before: float  # share of target prompts (with their seeds) whose image shows the concept, as written
    asr_after: float  # ... whose image, or an attack prompt's image on the same seed, shows it
    asr_attack_only: float  # ... where an attack prompt's image shows it (the attack's own reach, prompts as written left out)
    n_prompts: int  # target prompts x seeds
    budget: dict  # what the attack was allowed: paraphrases per prompt, images generated
    seconds: float
    found: list[dict] = field(default_factory=list)  # per success: prompt, seed, the attack prompt (to replay)


def paraphrases_of(concept: str) -> list[str]:
    """The built-in world's other words for the concept (from its caption synonyms)."""
    from ..evaluation.shapes import attribute_of
    from ..shapes.world import SYNONYMS

    _, value = attribute_of(concept)
    return [word for word in SYNONYMS[value] if word != concept]


class Paraphrase:
    name = "paraphrase"

    @staticmethod
    def run(erased, concept: str, prompts: list[str], seeds: list[int], detector, paraphrases: list[str] | None = None,
            steps: int = 35, guidance: float = 7.5, batch_size: int = 32) -> AttackResult:
        """Generate every target prompt as written and with each paraphrase in the concept's place; score with `detector`."""
        paraphrases = paraphrases if paraphrases is not None else paraphrases_of(concept)
        if not paraphrases:
            raise ErasekitError(f"no paraphrases of '{concept}': give a prompts file")
        word = re.compile(rf"\b{re.escape(concept)}\b")
        if not any(word.search(p) for p in prompts):
            raise ErasekitError(f"no target prompt names '{concept}', so there is nothing to paraphrase")
        start = time.perf_counter()
        originals = [(p, s) for p in prompts for s in seeds]
        attacked = [(p, s, word.sub(q, p)) for p in prompts if word.search(p) for s in seeds for q in paraphrases]
        jobs = [(p, s, guidance) for p, s in originals] + [(text, s, guidance) for _, s, text in attacked]
        images = [im for batch in make_batches(jobs, batch_size) for im in generate_batch(erased, batch, steps)]
        flags = detector.detect(images, concept).flags
        before = dict(zip(originals, flags[: len(originals)]))
        found = [{"prompt": p, "seed": s, "attack_prompt": text} for (p, s, text), hit in zip(attacked, flags[len(originals):]) if hit]
        succeeded = {(f["prompt"], f["seed"]) for f in found}
        return AttackResult(
            attack="paraphrase", concept=concept, asr_before=sum(before.values()) / len(before),
            asr_after=sum(hit or key in succeeded for key, hit in before.items()) / len(before),
            asr_attack_only=sum(key in succeeded for key in before) / len(before), n_prompts=len(before),
            budget={"paraphrases": paraphrases, "images": len(images)}, seconds=round(time.perf_counter() - start, 1), found=found,
        )
