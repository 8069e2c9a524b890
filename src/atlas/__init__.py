"""atlas: train and run diffusion image models on the hardware people have.

Layers (see docs/ARCHITECTURE in the repository): ``atlas.diffusion`` (pure maths), ``atlas.models``
(networks), ``atlas.conditioning`` (text encoders), ``atlas.data``, ``atlas.training``, ``atlas.eval``;
``atlas.pipeline`` and ``atlas.cli`` are the faces.
"""

__version__ = "0.1.0"
