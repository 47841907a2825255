"""neg-prompt: the concept as the negative prompt of classifier-free guidance, an inference-time baseline."""

from __future__ import annotations

from dataclasses import dataclass

from .base import InferenceMethod, SteeredPipeline


@dataclass
class NegativePromptConfig:
    def validate(self) -> None:
        pass


class NegativePromptPipeline(SteeredPipeline):
    """Call it like a StableDiffusionPipeline: the concept joins any negative prompt given."""

    def __init__(self, pipe, concept: str):
        super().__init__(pipe)
        self.concept = concept

    def __call__(self, prompt, negative_prompt=None, **kwargs):
        negative = [", ".join(filter(None, (n, self.concept))) for n in negative_prompt] if negative_prompt else [self.concept] * len(prompt)
        return self.pipe(prompt=prompt, negative_prompt=negative, **kwargs)


class NegativePrompt(InferenceMethod):
    name = "neg-prompt"
    Config = NegativePromptConfig

    @classmethod
    def steer(cls, pipe, concept, config):
        return NegativePromptPipeline(pipe, concept)
