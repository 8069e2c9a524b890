"""atlas: train and run diffusion image models on the hardware people have.

The easy API (imported on first use, so ``import atlas`` stays light)::

    import atlas
    sampler = atlas.create_sampler()                    # the bundled demo model, settings for this machine
    images = sampler.generate(["a red circle"], num_samples=4)

Layers (see ARCHITECTURE in the repository): ``atlas.diffusion`` and ``atlas.transport`` (pure maths),
``atlas.attention``, ``atlas.memory``, ``atlas.runtime``, ``atlas.models``, ``atlas.conditioning``,
``atlas.data``, ``atlas.training``, ``atlas.eval``, ``atlas.config``; ``atlas.api``, ``atlas.pipeline`` and
``atlas.cli`` are the faces.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "create_sampler": ("atlas.api", "create_sampler"),
    "EasySampler": ("atlas.api", "EasySampler"),
    "list_profiles": ("atlas.config.profiles", "list_profiles"),
    "detect_gpu_profile": ("atlas.config.profiles", "detect_gpu_profile"),
    "validate_configs": ("atlas.config.validation", "validate_configs"),
    "load_preset": ("atlas.config.presets", "load_preset"),
    "presets": ("atlas.config.presets", None),
    "save_images": ("atlas.images", "save_images"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'atlas' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
