"""Make the README's pictures from the shipped model and finished runs (paths below).

    python scripts/readme_figures.py            # docs/img/shapes_grid.png (+ copies of run figures that exist)
    python scripts/readme_figures.py --copies-only
    python scripts/readme_figures.py --pairs       # docs/img/pairs_grid.png only

The grid: seeded full captions from the world's grammar (fresh seed 7, not the quality seed), each
generated with the model's default sampler and read back by the pixel readers; a caption is printed
in red where the reader disagrees with it.
"""

import shutil
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import explore  # noqa: E402
from explore.evaluation.quality import full_captions  # noqa: E402
from explore.shapes.readers import read  # noqa: E402
from explore.shapes.world import FACTOR_KEYS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IMG = ROOT / "docs" / "img"
COPIES = {
    "runs/demo/edits.png": "demo_edits.png",
    "runs/eval_seed1/curves.png": "eval_curves.png",
    "runs/eval_seed1/per_attribute.png": "eval_per_attribute.png",
    "runs/probe/probe.png": "probe.png",
    "runs/probe_empty/probe.png": "probe_empty.png",
    "runs/geometry/geometry.png": "geometry.png",
}


def grid(world_name: str, model: str, title: str, rows: int = 3, cols: int = 6, seed: int = 7) -> Path:
    """Seeded full captions -> generated images, each read back; red title = the readers disagree
    (ShapesWorld: a factor wrong; Pairs: not bound)."""
    world = explore.worlds.get_world(world_name)
    pipe = explore.load_pipeline(model)
    prompts, labels = full_captions(world, rows * cols, seed)
    images = explore.generate(pipe, prompts, seed=seed, output_type="np")
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.1, rows * (2.6 if world_name == "shapes" else 2.9)))
    for ax, img, prompt, lab in zip(axes.flat, images, prompts, labels):
        if world_name == "shapes":
            r = read(img)
            ok = all(r[k] == lab[k] for k in FACTOR_KEYS)
        else:
            ok = world.score(world.read(img), lab)["binding"]
        ax.imshow(img, interpolation="nearest")
        ax.set_title("\n".join(textwrap.wrap(prompt, 24 if world_name == "shapes" else 26)),
                     fontsize=7 if world_name == "shapes" else 6, color="black" if ok else "red")
        ax.axis("off")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    out = IMG / f"{world_name}_grid.png"
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def shapes_grid() -> Path:
    return grid("shapes", "shapes", "ShapesWorld: seeded captions -> generated 64x64 images (20 steps, guidance 4; "
                "red = a reader disagrees)")


def pairs_grid() -> Path:
    return grid("pairs", "shapes-pairs", "ShapesWorld Pairs: seeded captions -> generated 64x64 images (20 steps, "
                "guidance 4; red = not bound)")


def main():
    import sys

    IMG.mkdir(parents=True, exist_ok=True)
    if "--pairs" in sys.argv:
        print(pairs_grid())
        return
    if "--copies-only" not in sys.argv:
        print(shapes_grid())
    for src, name in COPIES.items():
        if (ROOT / src).is_file():
            shutil.copy(ROOT / src, IMG / name)
            print(IMG / name)


if __name__ == "__main__":
    main()
