"""Does minibatch OT / Schrodinger-bridge coupling help flow matching?  independent vs ot vs sb, same model,
same steps, same seeds; quality at NFE in {2, 4, 8, 16}.

    python benchmarks/coupling_benefit.py [--quick] [--parts toy,digits] [--json out.json]

Both parts train a flow-matching model (``prediction="flow"``: the network predicts ``u = noise - x0`` on the
straight path, logit-normal t) with ``atlas.transport.pair_minibatch`` re-pairing noise and data in every
batch: ``independent`` (plain rectified flow), ``ot`` (exact assignment, OT-CFM) and ``sb`` (row-wise draws
from the entropic plan at eps = 0.1 x the batch's median squared distance, SB-CFM's coupling on the straight
path).  Each (coupling, seed) trains one model; every model is evaluated at several training steps with the
EMA weights, sampling with Euler (NFE = steps) on the flow grid (uniform in t, :func:`flow_sigmas`) and
Heun in t (``flow_heun``, NFE = 2 steps - 1).

* toy: 2-D mixture of 8 Gaussians (radius 2, std 0.1) from N(0, I); an MLP (3 x 128, SiLU) via
  :class:`atlas.diffusion.Denoiser` and :func:`atlas.diffusion.losses.diffusion_loss`.  Metric: sliced W2
  against fresh data (4096 vs 4096 points, 256 fixed directions; its noise floor, data vs data, is reported)
  and the mean distance of each NFE-k sample from the NFE-128 Euler sample of the same noise ("path error":
  how far few-step sampling is from the model's own ODE solution; straighter flows have less).
* digits: ``atlas.training.Trainer`` on the sklearn digits at 8x8 (captions "the digit seven"), a 0.3 M-param
  HighResLatentScoreModel; samples from ``atlas.pipeline.generate`` with the ten captions (guidance 1, so one
  network call per step).  Metrics: SW2 and MMD (pixels, 64-d) against the 1,797 real digits, and the accuracy
  of a logistic-regression digit classifier (fit on the real digits) on the samples (the caption's digit).

Reported as medians over seeds (toy) with min..max; one seed per coupling for digits in quick mode.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, environment, print_table  # noqa: E402

from atlas.diffusion import Denoiser, flow_sigmas, sample, sample_sigmas_logit_normal  # noqa: E402
from atlas.diffusion.losses import diffusion_loss  # noqa: E402
from atlas.eval.metrics import mmd, sliced_wasserstein2  # noqa: E402
from atlas.transport import COUPLINGS, pair_minibatch  # noqa: E402

NFES = (2, 4, 8, 16)
REFERENCE_NFE = 128


def eval_grid() -> list[tuple[str, int, int]]:
    """(sampler, steps, NFE): Euler at every NFE, Heun in t (``flow_heun``) at NFE - 1 = 2 steps - 1 (its last
    step is Euler)."""
    grid = [("euler", nfe, nfe) for nfe in NFES]
    grid += [("flow_heun", nfe // 2, nfe - 1) for nfe in NFES if nfe >= 4]
    return grid


# ---------------------------------------------------------------------------------------------- toy part
def mixture(n: int, generator: torch.Generator, radius: float = 2.0, std: float = 0.1) -> torch.Tensor:
    angles = torch.randint(0, 8, (n,), generator=generator) * (math.pi / 4)
    centres = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
    return centres + std * torch.randn(n, 2, generator=generator)


class MLP(nn.Module):
    """``network(x_scaled (B, 2), c_noise (B,)) -> (B, 2)``; c_noise enters with a few Fourier features."""

    def __init__(self, width: int = 128, depth: int = 3, frequencies: int = 4):
        super().__init__()
        self.register_buffer("scales", 2.0 ** torch.arange(frequencies, dtype=torch.float32))
        layers, inputs = [], 2 + 1 + 2 * frequencies
        for _ in range(depth):
            layers += [nn.Linear(inputs, width), nn.SiLU()]
            inputs = width
        self.net = nn.Sequential(*layers, nn.Linear(width, 2))

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        angle = c_noise[:, None] * self.scales
        return self.net(torch.cat([x, c_noise[:, None], angle.sin(), angle.cos()], dim=1))


def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    with torch.no_grad():
        for target, source in zip(ema.parameters(), model.parameters()):
            target.lerp_(source, 1.0 - decay)


@torch.no_grad()
def toy_samples(network: nn.Module, noise: torch.Tensor, sampler: str, steps: int) -> torch.Tensor:
    sigmas = flow_sigmas(steps, sigma_max=1000.0)
    return sample(sampler, Denoiser(network, "flow"), noise * sigmas[0], sigmas)


def toy_run(coupling: str, seed: int, steps: int, eval_steps: list[int], batch: int, n_eval: int) -> list[dict]:
    torch.manual_seed(seed)
    network = MLP()
    ema = copy.deepcopy(network).requires_grad_(False)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    denoiser = Denoiser(network, "flow")
    data_gen = torch.Generator().manual_seed(10_000 + seed)
    pairing_gen = torch.Generator().manual_seed(20_000 + seed)  # so every coupling sees the same data and noise
    eval_gen = torch.Generator().manual_seed(123)
    reference_data = mixture(n_eval, eval_gen)
    eval_noise = torch.randn(n_eval, 2, generator=eval_gen)
    rows, costs = [], []
    for step in range(1, steps + 1):
        x0 = mixture(batch, data_gen)
        noise = torch.randn(batch, 2, generator=data_gen)
        pairing = pair_minibatch(x0, noise, coupling, generator=pairing_gen)
        costs.append(pairing.mean_cost)
        sigma = sample_sigmas_logit_normal(batch, generator=data_gen)
        loss = diffusion_loss(denoiser, x0, sigma, pairing.noise).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema_update(ema, network, 0.995)
        if step in eval_steps:
            reference = toy_samples(ema, eval_noise, "euler", REFERENCE_NFE)
            projections = torch.Generator().manual_seed(7)
            base = {"part": "toy", "coupling": coupling, "seed": seed, "train_step": step,
                    "pair_cost": statistics.mean(costs[-100:])}
            rows.append({**base, "sampler": "euler", "nfe": REFERENCE_NFE,
                         "sw2": sliced_wasserstein2(reference, reference_data, generator=projections)})
            for sampler, n, nfe in eval_grid():
                out = toy_samples(ema, eval_noise, sampler, n)
                projections = torch.Generator().manual_seed(7)
                rows.append({**base, "sampler": sampler, "nfe": nfe,
                             "sw2": sliced_wasserstein2(out, reference_data, generator=projections),
                             "path_error": float((out - reference).norm(dim=1).mean())})
    return rows


def toy_floor(n_eval: int) -> float:
    a = mixture(n_eval, torch.Generator().manual_seed(123))
    b = mixture(n_eval, torch.Generator().manual_seed(456))
    return sliced_wasserstein2(a, b, generator=torch.Generator().manual_seed(7))


# ------------------------------------------------------------------------------------------- digits part
def digit_classifier():
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    bunch = load_digits()
    pixels = bunch.images.reshape(len(bunch.images), -1) / 16.0 * 2.0 - 1.0  # the dataset's [-1, 1] scale
    classifier = LogisticRegression(max_iter=2000).fit(pixels, bunch.target)
    return classifier, torch.tensor(pixels, dtype=torch.float32), bunch.target


def digits_run(coupling: str, seed: int, steps: int, eval_steps: list[int], per_digit: int, classifier) -> list[dict]:
    from atlas.bundle import ModelBundle
    from atlas.data import load_dataset
    from atlas.data.digits import DIGIT_WORDS
    from atlas.pipeline import generate
    from atlas.training.config import TrainingConfig
    from atlas.training.run import build_bundle
    from atlas.training.trainer import Trainer, step_seed

    model, real_pixels, _ = classifier
    config = TrainingConfig(dataset="digits", resolution=8, steps=steps, batch_size=128, lr=1e-3,
                            warmup_steps=100, ema_decay=0.995, cond_dropout=0.1, prediction="flow",
                            coupling=coupling, seed=seed, checkpoint_every=0, log_every=10**9)
    dataset = load_dataset("digits", resolution=8, seed=seed)
    torch.manual_seed(step_seed(seed, 0, stream=0))
    overrides = {"base_channels": 32, "channel_mult": (1, 2), "num_res_blocks": 1, "attention_levels": (1,),
                 "norm_groups": 8}
    bundle = build_bundle(dataset, config, overrides)
    prompts = [f"the digit {word}" for word in DIGIT_WORDS]
    rows = []
    with tempfile.TemporaryDirectory() as out_dir:
        trainer = Trainer(bundle, dataset, config, out_dir, progress=False)
        started = time.perf_counter()
        while trainer.step < steps:
            trainer.train_step()
            if trainer.step not in eval_steps:
                continue
            train_s = time.perf_counter() - started
            ema = ModelBundle.from_config_dict(bundle.config_dict())
            ema.load_state_dict(trainer.inference_weights())
            ema.eval()
            for sampler, n, nfe in eval_grid():
                result = generate(ema, prompts, num_samples=per_digit, steps=n, sampler=sampler, guidance_scale=1.0,
                                  schedule="flow", seed=1000)
                pixels = result.images.reshape(len(result.images), -1) * 2.0 - 1.0
                labels = [i for i in range(10) for _ in range(per_digit)]
                accuracy = float((model.predict(pixels.numpy()) == labels).mean())
                rows.append({"part": "digits", "coupling": coupling, "seed": seed, "train_step": trainer.step,
                             "sampler": sampler, "nfe": nfe, "train_s": train_s,
                             "sw2": sliced_wasserstein2(pixels, real_pixels,
                                                        generator=torch.Generator().manual_seed(7)),
                             "mmd": mmd(pixels, real_pixels), "digit_accuracy": accuracy})
            started = time.perf_counter() - train_s
    return rows


# ------------------------------------------------------------------------------------------------ report
def summarise(rows: list[dict], metrics: tuple[str, ...]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["part"], row["train_step"], row["sampler"], row["nfe"], row["coupling"]), []).append(row)
    table = []
    for (part, step, sampler, nfe, coupling), members in sorted(groups.items(), key=lambda kv: (
            kv[0][0], kv[0][1], kv[0][2], kv[0][3], COUPLINGS.index(kv[0][4]))):
        entry = {"part": part, "train_step": step, "sampler": sampler, "nfe": nfe, "coupling": coupling,
                 "seeds": len(members)}
        for metric in metrics:
            values = [m[metric] for m in members if metric in m]
            if values:
                entry[metric] = statistics.median(values)
                if len(values) > 1:
                    entry[f"{metric}_range"] = f"{min(values):.4g}..{max(values):.4g}"
        table.append(entry)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and seeds (minutes, not an hour)")
    parser.add_argument("--parts", default="toy,digits", help="comma-separated: toy, digits")
    parser.add_argument("--json", default=None, help="also write the JSON document here")
    args = parser.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - {"toy", "digits"})
    if unknown:
        parser.error(f"unknown parts {unknown}; choose from toy, digits")
    torch.set_num_threads(min(2, torch.get_num_threads()))

    toy_steps = 1000 if args.quick else 3000
    toy_evals = [toy_steps // 4, toy_steps // 2, toy_steps]
    toy_seeds = [0, 1] if args.quick else [0, 1, 2]
    digit_steps = 400 if args.quick else 1500
    digit_evals = [digit_steps // 2, digit_steps] if args.quick else [digit_steps // 6, digit_steps // 2, digit_steps]
    digit_seeds = [0] if args.quick else [0, 1]

    rows: list[dict] = []
    document = {"benchmark": "coupling_benefit", "environment": environment(), "quick": args.quick,
                "settings": {"toy": {"steps": toy_steps, "eval_steps": toy_evals, "seeds": toy_seeds, "batch": 256,
                                     "n_eval": 4096},
                             "digits": {"steps": digit_steps, "eval_steps": digit_evals, "seeds": digit_seeds,
                                        "batch": 128, "per_digit": 50}}}
    if "toy" in parts:
        document["toy_sw2_floor"] = toy_floor(4096)
        for seed in toy_seeds:
            for coupling in COUPLINGS:
                started = time.perf_counter()
                rows += toy_run(coupling, seed, toy_steps, toy_evals, 256, 4096)
                print(f"toy {coupling} seed {seed}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if "digits" in parts:
        classifier = digit_classifier()
        document["digits_classifier_accuracy_on_real"] = float(
            (classifier[0].predict(classifier[1].numpy()) == classifier[2]).mean())
        for seed in digit_seeds:
            for coupling in COUPLINGS:
                started = time.perf_counter()
                rows += digits_run(coupling, seed, digit_steps, digit_evals, 50, classifier)
                print(f"digits {coupling} seed {seed}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    metrics = ("sw2", "path_error", "pair_cost", "mmd", "digit_accuracy", "train_s")
    table = summarise(rows, metrics)
    document["rows"] = rows
    document["summary"] = table
    emit(document, args.json)
    for part in parts:
        print(f"\n{part}:")
        columns = ["train_step", "sampler", "nfe", "coupling", "sw2", "sw2_range"]
        columns += ["path_error", "pair_cost"] if part == "toy" else ["mmd", "digit_accuracy"]
        print_table([r for r in table if r["part"] == part], columns)


if __name__ == "__main__":
    main()
