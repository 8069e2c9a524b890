"""Generate images from the command line with the easy API (the specification's ``easy_start``).

    python -m atlas.examples.easy_start --num_samples 4                       # the bundled demo model
    python -m atlas.examples.easy_start --checkpoint runs/mine/model --gpu_memory 8GB
    python -m atlas.examples.easy_start --prompts "a red circle" "a blue square" --guidance_scale 3
    python -m atlas.examples.easy_start --list_profiles

The same command as ``atlas generate`` (every flag of one works in the other; ``--help`` lists them):
``--checkpoint --num_samples --gpu_memory --prompts --guidance_scale --timesteps --seed --output_dir
--list_profiles``, plus ``--resolution``, ``--tile-size``, ``--batch-size``, ``--precision``, ``--device``.
"""

from __future__ import annotations

from atlas.cli import generate


def main(argv: list[str] | None = None) -> None:
    generate.main(argv, prog_name="python -m atlas.examples.easy_start")


if __name__ == "__main__":
    main()
