"""`TrainingConfig`: every knob of the training loop, validated on construction."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from atlas.config.kernel import KernelConfig
from atlas.diffusion import PREDICTIONS
from atlas.fields import check_known_fields
from atlas.transport.coupling import COUPLINGS

PRECISIONS = ("fp32", "bf16", "fp16")
LR_SCHEDULES = ("constant", "cosine")


@dataclass
class TrainingConfig:
    """Training-loop settings (the model architecture lives in HighResModelConfig).

    Attributes:
        dataset: "shapes", "digits" or "folder:PATH" (``atlas.data.load_dataset``). ``train(..., dataset=
            DatasetConfig)`` replaces it (and dataset_size) by the DatasetConfig's ``spec`` (and ``size``).
        dataset_size: number of items (None = the dataset's default: 10000 shapes, all digits or images).
        resolution: training side length.
        steps: optimizer steps (the run length), unless ``epochs`` is set.
        epochs: None, or the run length in passes over the dataset: ``epochs * ceil(len(dataset) /
            batch_size)`` optimizer steps, which replaces ``steps`` when the run starts (see ``for_dataset``).
            Batches are consecutive slices of per-epoch permutations, so every image is seen at least
            ``epochs`` times.
        batch_size: images per optimizer step.
        grad_accum: micro-batches per step (batch_size must divide evenly); the gradient equals the
            full-batch gradient.
        lr, weight_decay, betas: AdamW settings.
        warmup_steps: linear learning-rate warm-up from 0.
        lr_schedule: "constant" after warm-up, or "cosine" decay to 0 at ``steps``.
        grad_clip: clip the global gradient norm to this value (None = no clipping).
        ema_decay: EMA decay per optimizer step (0 = no averaging); ema_warmup: use the (1+t)/(10+t) ramp.
        precision: "fp32", "bf16" (autocast, CPU or CUDA) or "fp16" (autocast + GradScaler, CUDA only).
        compile: wrap the network in torch.compile; falls back to eager with a warning if compiling fails.
        cond_dropout: probability of replacing a caption by the empty prompt (classifier-free guidance).
        prediction: network parameterisation ("edm", "eps", "v", "x0", or "flow" for flow matching). Training
            noise levels: log-normal (EDM) for "edm" and "x0", VP-cosine for "eps" and "v", logit-normal t for
            "flow".
        min_snr_gamma: min-SNR loss weighting (eps/v/x0 only; None = off).
        coupling: how noise is paired with the images of a batch: "independent", "ot" (exact minibatch OT
            assignment, OT-CFM) or "sb" (draws from the entropic plan, SB-CFM); see atlas.transport.coupling.
        coupling_kernel: the entropic-OT settings of "sb" (epsilon, relative to the batch's median squared
            distance by default, and the kernel operator); see atlas.config.KernelConfig.
        sb_iterations: Sinkhorn iteration cap per batch for "sb" (a RuntimeWarning says when it is reached).
        seed: seeds data order, noise, sigmas and dropout (all derived from (seed, step)).
        log_every, sample_every, checkpoint_every: periods in steps (0 = never for samples/checkpoints).
        keep_checkpoints: how many step checkpoints to keep (older ones are deleted after a newer one is saved).
        device: torch device string.
    """

    dataset: str = "shapes"
    dataset_size: int | None = None
    resolution: int = 32
    steps: int = 1000
    epochs: int | None = None
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 5e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 100
    lr_schedule: str = "constant"
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    ema_warmup: bool = True
    precision: str = "fp32"
    compile: bool = False
    cond_dropout: float = 0.1
    prediction: str = "edm"
    min_snr_gamma: float | None = None
    coupling: str = "independent"
    coupling_kernel: KernelConfig = field(default_factory=KernelConfig)
    sb_iterations: int = 1000
    seed: int = 0
    log_every: int = 50
    sample_every: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    device: str = "cpu"

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        positive = ("resolution", "steps", "batch_size", "grad_accum", "log_every", "keep_checkpoints")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TrainingConfig.{name}={value!r} must be a positive integer")
        for name in ("warmup_steps", "sample_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainingConfig.{name}={getattr(self, name)!r} must be >= 0 (0 disables it)")
        if self.epochs is not None and (isinstance(self.epochs, bool) or not isinstance(self.epochs, int)
                                        or self.epochs < 1):
            raise ValueError(f"TrainingConfig.epochs={self.epochs!r} must be a positive integer, or None to "
                             f"train for steps={self.steps}")
        if self.dataset_size is not None and self.dataset_size < 1:
            raise ValueError(f"TrainingConfig.dataset_size={self.dataset_size!r} must be >= 1 or None")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"TrainingConfig.batch_size={self.batch_size} must be divisible by grad_accum="
                             f"{self.grad_accum}; e.g. batch_size={self.grad_accum * max(1, self.batch_size // self.grad_accum)}")
        if not self.lr > 0:
            raise ValueError(f"TrainingConfig.lr={self.lr!r} must be > 0 (1e-4 .. 1e-3 is typical)")
        if self.weight_decay < 0:
            raise ValueError(f"TrainingConfig.weight_decay={self.weight_decay!r} must be >= 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"TrainingConfig.betas={self.betas!r} must be two numbers in [0, 1)")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"TrainingConfig.lr_schedule={self.lr_schedule!r} must be one of {LR_SCHEDULES}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"TrainingConfig.grad_clip={self.grad_clip!r} must be > 0 or None")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"TrainingConfig.ema_decay={self.ema_decay!r} must be in [0, 1)")
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainingConfig.precision={self.precision!r} must be one of {PRECISIONS}")
        if self.precision == "fp16" and not self.device.startswith("cuda"):
            raise ValueError("TrainingConfig.precision='fp16' needs a CUDA device (fp16 autocast with a GradScaler); "
                             "on CPU use precision='bf16' or 'fp32'")
        if not 0 <= self.cond_dropout <= 1:
            raise ValueError(f"TrainingConfig.cond_dropout={self.cond_dropout!r} must be in [0, 1]")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"TrainingConfig.prediction={self.prediction!r} must be one of {PREDICTIONS}")
        if self.coupling not in COUPLINGS:
            raise ValueError(f"TrainingConfig.coupling={self.coupling!r} must be one of {COUPLINGS}")
        if not isinstance(self.coupling_kernel, KernelConfig):
            raise TypeError(f"TrainingConfig.coupling_kernel must be a KernelConfig, got "
                            f"{type(self.coupling_kernel).__name__}; use KernelConfig.from_dict for a dict")
        if isinstance(self.sb_iterations, bool) or not isinstance(self.sb_iterations, int) or self.sb_iterations < 1:
            raise ValueError(f"TrainingConfig.sb_iterations={self.sb_iterations!r} must be a positive integer "
                             "(1000 is plenty for eps = 0.1 x the median squared distance)")
        if self.min_snr_gamma is not None:
            if self.prediction not in ("eps", "v", "x0"):
                raise ValueError(f"TrainingConfig.min_snr_gamma applies to eps/v/x0 prediction, not "
                                 f"{self.prediction!r} (which has its own weighting). Set min_snr_gamma=None or "
                                 f"prediction='eps'/'v'")
            if not self.min_snr_gamma > 0:
                raise ValueError(f"TrainingConfig.min_snr_gamma={self.min_snr_gamma!r} must be > 0 (5 is typical)")

    @property
    def micro_batch_size(self) -> int:
        return self.batch_size // self.grad_accum

    def steps_per_epoch(self, dataset_length: int) -> int:
        """Optimizer steps for one pass over ``dataset_length`` images: ceil(dataset_length / batch_size)."""
        if isinstance(dataset_length, bool) or not isinstance(dataset_length, int) or dataset_length < 1:
            raise ValueError(f"dataset_length={dataset_length!r} must be a positive number of images")
        return -(-dataset_length // self.batch_size)

    def for_dataset(self, dataset_length: int) -> "TrainingConfig":
        """The config with the run length fixed: ``epochs`` turned into ``steps`` for this dataset.

        With ``epochs`` set, returns a copy with ``steps = epochs * steps_per_epoch(dataset_length)`` and
        ``epochs=None`` (the resolved run, as the trainer saves and resumes it: only ``steps`` may grow on
        resume, so a larger ``epochs`` resumes as more steps). Without ``epochs``, returns ``self``.
        """
        if self.epochs is None:
            return self
        return replace(self, steps=self.epochs * self.steps_per_epoch(dataset_length), epochs=None)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainingConfig":
        data = dict(data)
        if "coupling_eps" in data:  # written before KernelConfig existed (same meaning: relative epsilon)
            data["coupling_kernel"] = {"epsilon": data.pop("coupling_eps")}
        check_known_fields(cls, data)
        if isinstance(data.get("coupling_kernel"), dict):
            data["coupling_kernel"] = KernelConfig.from_dict(data["coupling_kernel"])
        return cls(**data)
