"""erasekit: erase a concept from a text-to-image diffusion model, measure it, attack it."""

__version__ = "0.1.0"

from .api import generate, load_pipeline  # noqa: E402
from .errors import ErasekitError  # noqa: E402
from .erase import Erasure, erase, load_erasure  # noqa: E402

__all__ = ["generate", "load_pipeline", "erase", "load_erasure", "Erasure", "ErasekitError", "__version__"]
