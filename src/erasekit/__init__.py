"""erasekit: erase a concept from a text-to-image diffusion model, measure it, attack it.

The names below load on first use, so `import erasekit` (and `erasekit --help`) does not wait for
torch and diffusers.
"""

__version__ = "0.1.0"

_EXPORTS = {
    "generate": "api", "Sampling": "api", "load_pipeline": "model", "erase": "erase", "load_erasure": "erase", "Erasure": "erase",
    "ErasekitError": "errors", "ErasekitWarning": "errors",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'erasekit' has no attribute '{name}'")
    from importlib import import_module

    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
