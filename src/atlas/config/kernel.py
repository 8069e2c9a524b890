"""`KernelConfig`: which kernel operator the Schrodinger-bridge coupling solves on, and how big it may be.

The specification's transport knobs, and what each does in atlas (``docs/TRANSPORT.md`` has the full story):

* ``solver_type``: the operator of the entropic-OT solve behind ``coupling="sb"``.  ``"direct"`` is the exact
  log-domain Sinkhorn on the dense cost (stable at any eps); ``"nystrom"`` and ``"rff"`` run Sinkhorn's scaling
  iterations on a low-rank approximation (O(B r) per iteration instead of O(B^2), but they raise when the
  approximation has negative entries, which happens at small eps); ``"auto"`` applies
  :func:`atlas.transport.select_kernel_operator` to (batch, dimension, ``memory_budget_mb``): dense whenever it
  fits, which for training batches (B <= a few thousand) is always.  ``"fft"`` needs points on a regular grid and
  a training batch is not one, so it is rejected here; use :func:`atlas.transport.grid_sinkhorn` for histograms.
* ``epsilon``: the entropic regularisation, as a fraction of the batch's median squared distance
  (``relative_epsilon=True``) or in absolute squared-distance units.  Small -> close to the exact OT pairing
  (``coupling="ot"``), large -> close to independent pairing.
* ``rff_features`` / ``nystrom_landmarks``: sizes of the approximations (None: sized by ``auto``'s rules).
* ``orthogonal_features``: orthogonal instead of iid random features (lower variance, same cost).

There is deliberately no kernel cache: every operator here is built from the current batch, so a cache keyed by
the data never hits during training, and one keyed by shape alone returns another batch's kernel (the stale-cache
bug of the reference implementation).  The Sinkhorn iteration cap is ``TrainingConfig.sb_iterations``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from atlas.fields import check_known_fields
from atlas.transport import KernelOperator, build_kernel_operator, select_kernel_operator
from atlas.transport.auto import KernelChoice
from atlas.transport.direct import direct_memory_bytes
from atlas.transport.nystrom import nystrom_memory_bytes
from atlas.transport.rff import rff_memory_bytes

__all__ = ["KERNEL_SOLVERS", "KernelConfig"]

KERNEL_SOLVERS = ("auto", "direct", "fft", "rff", "nystrom")


def _positive_int_or_none(name: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"KernelConfig.{name}={value!r} must be a positive integer or None (sized automatically)")


@dataclass(frozen=True)
class KernelConfig:
    """Kernel-operator settings of the Schrodinger-bridge coupling (see the module docstring for each field).

    Attributes:
        solver_type: "auto", "direct", "rff" or "nystrom" ("fft" is for grids and raises for point batches).
        epsilon: entropic regularisation (> 0); relative to the median squared distance when relative_epsilon.
        relative_epsilon: interpret epsilon relative to the batch (True) or in absolute units (False).
        rff_features: random features D for "rff" (None: ``auto`` sizing for a 0.02 mean error, within budget).
        nystrom_landmarks: landmarks for "nystrom" (None: ``auto`` sizing, up to 1024, within budget).
        orthogonal_features: orthogonal random features for "rff".
        memory_budget_mb: the most memory the operator may take (``auto`` stays under it).
        seed: seeds the random features / landmarks of each batch (combined with the training step).
    """

    solver_type: str = "auto"
    epsilon: float = 0.1
    relative_epsilon: bool = True
    rff_features: Optional[int] = None
    nystrom_landmarks: Optional[int] = None
    orthogonal_features: bool = True
    memory_budget_mb: float = 256.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.solver_type not in KERNEL_SOLVERS:
            raise ValueError(f"KernelConfig.solver_type={self.solver_type!r} must be one of {KERNEL_SOLVERS}")
        if not (isinstance(self.epsilon, (int, float)) and 0 < self.epsilon < math.inf):
            raise ValueError(f"KernelConfig.epsilon={self.epsilon!r} must be a positive finite number; 0.1 (relative "
                             "to the median squared distance) is typical")
        _positive_int_or_none("rff_features", self.rff_features)
        _positive_int_or_none("nystrom_landmarks", self.nystrom_landmarks)
        if not (isinstance(self.memory_budget_mb, (int, float)) and self.memory_budget_mb > 0):
            raise ValueError(f"KernelConfig.memory_budget_mb={self.memory_budget_mb!r} must be > 0 (MiB)")

    def choose(self, num_points: int, dim: int, dtype_bytes: int = 8) -> KernelChoice:
        """The operator for ``num_points`` x ``num_points`` points in ``dim`` dimensions, as a KernelChoice.

        "auto" is :func:`atlas.transport.select_kernel_operator` under ``memory_budget_mb`` (with this config's
        sizes where given); an explicit kind is built as asked (its sizes default like auto's).
        """
        if self.solver_type == "fft":
            raise ValueError("KernelConfig.solver_type='fft' needs points on a regular grid; a batch of samples is "
                             "a point cloud. Use 'auto', 'direct', 'nystrom' or 'rff' (grid histograms: "
                             "atlas.transport.grid_sinkhorn)")
        if self.solver_type == "auto":
            choice = select_kernel_operator(num_points, dim, memory_budget_bytes=int(self.memory_budget_mb * 2**20),
                                            dtype_bytes=dtype_bytes)
            kind, params, reason = choice.kind, dict(choice.params), choice.reason
        else:
            kind, reason = self.solver_type, f"solver_type={self.solver_type!r} requested"
            params = {"num_points": (num_points, num_points), "dim": dim, "cost": "sqeuclidean",
                      "num_features": 2500, "num_landmarks": min(2 * num_points, 1024)}
        if kind == "rff":
            params["num_features"] = self.rff_features or params["num_features"]
            params["orthogonal"] = self.orthogonal_features
        if kind == "nystrom":
            params["num_landmarks"] = self.nystrom_landmarks or params["num_landmarks"]
        estimates = {"direct": lambda: direct_memory_bytes(num_points, num_points, dtype_bytes),
                     "rff": lambda: rff_memory_bytes(num_points, num_points, dim, params["num_features"], dtype_bytes),
                     "nystrom": lambda: nystrom_memory_bytes(num_points, num_points, params["num_landmarks"],
                                                             dtype_bytes)}
        expected = {"direct": 0.0, "rff": params.get("num_features", 1) ** -0.5, "nystrom": math.nan}[kind]
        return KernelChoice(kind, params, estimates[kind](), reason, expected)

    def kernel_factory(self, seed: int = 0):
        """``factory(x, y, eps) -> operator or None`` for :func:`atlas.transport.pair_minibatch`, or ``None`` for
        solver_type="direct".  ``None`` (from either) means the exact log-domain solver; "auto" gives it whenever
        the dense kernel fits the budget.  ``seed`` is mixed with :attr:`seed` for the random features/landmarks."""
        if self.solver_type == "direct":
            return None

        def factory(x: Tensor, y: Tensor, eps: float) -> Optional[KernelOperator]:
            choice = self.choose(x.shape[0], x.shape[1], x.element_size())
            if choice.kind == "direct":
                return None
            generator = torch.Generator(device=x.device).manual_seed((self.seed * 1_000_003 + seed) % 2**63)
            return build_kernel_operator(choice, x, y, eps=eps, generator=generator)

        return factory

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "KernelConfig":
        check_known_fields(cls, data)
        return cls(**data)

