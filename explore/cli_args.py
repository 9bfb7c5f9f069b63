"""Command-line arguments: parsing and the checks every command runs before it loads a model.

Each check raises `explore.errors.InputError` with one line naming the flag and what to pass, so a
bad invocation of ``python -m explore`` answers at once (no traceback, no loading progress bars).
Imports of torch / diffusers happen inside the checks that need them (``--help`` stays instant).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

COMMANDS: dict[str, tuple] = {}


def command(name: str, help: str):
    """Register ``name``: the decorated function adds its arguments to a parser and returns the runner."""
    def deco(fn):
        COMMANDS[name] = (fn, help)
        return fn

    return deco


def torch_dtype(name: str):
    from .pipeline.load import as_dtype

    return as_dtype(name, "--dtype")


def common(p: argparse.ArgumentParser, model: bool = True, out: str | None = None) -> None:
    if model:
        p.add_argument("--model", default="shapes", help="'shapes' (default), 'tiny-sd3', 'tiny-flux', a hub id or "
                                                         "a local folder")
        p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
        p.add_argument("--dtype", default="fp32", help="fp32 (default), bf16 or fp16")
        p.add_argument("--quantization", default=None, help="quantise the transformer's weights: int8 (torchao, also "
                                                             "on a CPU), fp8, int4 (torchao, GPU), nf4, bnb-int8 "
                                                             "(bitsandbytes, GPU)")
        p.add_argument("--offload", default=None, choices=("model", "sequential"),
                       help="diffusers' CPU offload: 'model' (one component on the GPU at a time) or 'sequential'")
    p.add_argument("--seed", type=int, default=0)
    if out is not None:
        p.add_argument("--out", default=out, help=f"output path (default {out})")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def check_device(device: str) -> None:
    from .pipeline.load import check_device as check

    check(device, "--device")


def check_runtime(args):
    """``--dtype`` and ``--device`` (checked before anything is loaded); returns the torch dtype."""
    from .pipeline.load import check_runtime as check

    _, dtype = check(args.device, args.dtype, ("--device", "--dtype"))
    if getattr(args, "seed", None) is not None:
        from .checks import check_seed

        check_seed(args.seed, "--seed")
    return dtype


def load(args):
    """The command's pipeline; on a GPU, a model explore knows the size of is checked to fit first
    (`explore.evaluation.memory.preflight`: the estimate of the command's method at 1024²)."""
    from .pipeline.load import load_pipeline

    dtype = check_runtime(args)
    quantization, offload = getattr(args, "quantization", None), getattr(args, "offload", None)
    if str(args.device).startswith("cuda"):
        from .evaluation.memory import preflight

        method = getattr(args, "method", None)
        preflight(args.model, args.device, method if isinstance(method, str) else "hsds",
                  dtype=args.dtype, quantization=quantization, offload=offload)
    return load_pipeline(args.model, device=args.device, dtype=dtype, quantization=quantization, offload=offload)


def model_world(model: str) -> str | None:
    """The embedded world `load_pipeline(model)` gives the pipeline, read without loading anything.

    The same rule as `load_pipeline`: an embedded model's or a local folder's ``explore.json`` names
    it; ``tiny-*`` pipelines, hub ids and folders without ``explore.json`` have none. A path that does
    not exist raises now (``no folder at ...``).
    """
    from .io import MODEL_JSON, read_json
    from .pipeline.load import EMBEDDED, TINY, weights_source
    from .worlds import WORLDS

    if model in TINY:
        return None
    if model in EMBEDDED:
        folder = EMBEDDED[model]
        default = next((w.name for w in WORLDS.values() if w.model == model), None)
    else:
        folder, default = weights_source(model).folder, None
    if folder is None or not (folder / MODEL_JSON).is_file():  # a hub id, or a folder load_pipeline reports on
        return default
    cfg = read_json(folder / MODEL_JSON)
    return cfg.get("world") if isinstance(cfg, dict) else default


def size_multiple(model: str) -> int | None:
    """Image sides must be multiples of this for ``model``, read from its folder's configs the way
    `explore.pipeline.spec.size_multiple` reads the loaded pipeline (None: known only once loaded)."""
    return size_rule(model)[0]


def size_rule(model: str) -> tuple[int | None, int | None]:
    """``(multiple, largest side)`` of ``model``'s images from its folder's configs, as
    `explore.pipeline.spec` reads them from a loaded pipeline (None: known only once loaded, or no bound)."""
    from .io import read_json
    from .pipeline.load import EMBEDDED, TINY, weights_source

    if model in TINY:
        return None, None
    folder = EMBEDDED.get(model) or weights_source(model).folder
    if folder is None:
        return None, None
    try:
        index = read_json(folder / "model_index.json")
        factor = 2 ** (len(read_json(folder / "vae" / "config.json")["block_out_channels"]) - 1)
        cls = index["transformer"][1]
        if cls == "FluxTransformer2DModel":
            return factor * 2, None
        if cls == "SD3Transformer2DModel":
            cfg = read_json(folder / "transformer" / "config.json")
            grid = cfg.get("pos_embed_max_size")
            patch = int(cfg["patch_size"])
            return factor * patch, None if grid is None else int(grid) * patch * factor
    except (OSError, ValueError, KeyError, TypeError, IndexError):  # load_pipeline says what is wrong
        return None, None
    return None, None


def parse_shard(text: str) -> tuple[int, int]:
    """``--shard R/W``: rank R of W jobs (0 <= R < W)."""
    from argparse import ArgumentTypeError

    try:
        rank, world = (int(x) for x in text.split("/"))
    except ValueError:
        raise ArgumentTypeError(f"--shard must be R/W (e.g. 0/2), got {text!r}") from None
    if not 0 <= rank < world:
        raise ArgumentTypeError(f"--shard R/W needs 0 <= R < W, got {text!r}")
    return rank, world


def parse_resize(text: str | None):
    """``--resize``: crop, resize, or HxW (e.g. 128x128: resample to that size)."""
    from argparse import ArgumentTypeError as InputError  # argparse prints its message as the one error line

    if text is None or text in ("crop", "resize"):
        return text
    parts = text.lower().split("x")
    try:
        h, w = (int(x) for x in parts)
    except ValueError:
        raise InputError(f"invalid choice: {text!r} (choose from crop, resize or HxW such as 128x128)") from None
    if h <= 0 or w <= 0:
        raise InputError(f"--resize sides must be positive, got {text!r}")
    return (h, w)


def needs_world(model: str, message: str):
    """The model's embedded `World` (`InputError` with ``message`` when it has none)."""
    from .errors import InputError
    from .worlds import get_world

    name = model_world(model)
    if name is None:
        raise InputError(message)
    return get_world(name)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def out_file(path: str | Path, what: str = "output", suffixes: tuple[str, ...] | None = None) -> Path:
    """An output file: its suffix (one of ``suffixes``) and that it can be written."""
    from .errors import InputError
    from .io import check_writable

    path = Path(path)
    if suffixes is not None and path.suffix.lower() not in suffixes:
        shown = " or ".join(x for x in suffixes if x != ".jpeg")
        raise InputError(f"--out must end in {shown}, got {path.name!r}")
    return check_writable(path, what, folder=False)


def out_folder(path: str | Path, what: str = "output folder") -> Path:
    from .io import check_writable

    return check_writable(path, what, folder=True)


def at_least(flag: str, value: int | None, lo: int, why: str = "") -> None:
    from .errors import InputError

    if value is not None and value < lo:
        raise InputError(f"{flag} must be at least {lo}{why}, got {value}")


def finite(flag: str, value: float | None, lo: float | None = None, hi: float | None = None) -> None:

    from .errors import InputError

    if value is None:
        return
    if not math.isfinite(value):
        raise InputError(f"{flag} must be a finite number, got {value}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"in [{lo}, {hi}]" if lo is not None and hi is not None else f">= {lo}" if lo is not None \
            else f"<= {hi}"
        raise InputError(f"{flag} must be {bounds}, got {value}")


def positive(flag: str, value: float | None) -> None:
    from .errors import InputError

    finite(flag, value)
    if value is not None and value <= 0:
        raise InputError(f"{flag} must be > 0, got {value}")


def check_method(name: str) -> str:
    from .editing.methods import method_names
    from .errors import InputError

    if name not in method_names():
        raise InputError(f"unknown method {name!r}; known: {', '.join(method_names())}")
    return name


def check_image_arg(path: str, resize=None):
    """Open the image the way every image is opened (`explore.images.to_pil`); returns the PIL image."""
    from .images import check_resize, to_pil

    check_resize(resize)
    return to_pil(Path(path))


def check_image_size(image, model: str, resize=None) -> None:
    """Apply the model's size rule where its folder says what it is (otherwise it is checked once loaded)."""
    from .errors import InputError
    from .images import fit_size

    multiple, side = size_rule(model)
    if multiple:
        w, h = fit_size([image], multiple, resize)[0].size
        if side is not None and (h > side or w > side):
            raise InputError(f"image is {w}x{h} but {model} takes at most {side}x{side}; pass "
                             f"--resize {min(h, side)}x{min(w, side)} or a smaller image")


def parse_pair(text: str, flag: str) -> tuple[str, str]:
    """``a->b`` (also ``=>``, ``>``, ``:``) as ``(a, b)``: the rule of `explore.editing.directions.parse_swap`."""
    from .editing.directions import parse_swap
    from .errors import InputError

    try:
        return parse_swap(text)
    except InputError:
        raise InputError(f"{flag} must look like 'red->blue', got {text!r}") from None


def parse_edit(text: str) -> tuple[str, str]:
    return parse_pair(text, "--edit")


def parse_preserve(text: str | None, world, attribute) -> list | None:
    """``--preserve``: None (the default), [] for 'none', else attribute names, ``a->b`` / ``a>b`` word
    pairs and ``auto``, checked against the model's world (``world`` None: names do not work).
    ``attribute``: the edited attribute, or a list of them (a composed edit)."""
    from .editing.preserve import parse_auto
    from .errors import InputError

    if not text:
        return None
    if text.strip().lower() == "none":
        return []
    edited = set(attribute) if isinstance(attribute, (list, tuple, set)) else {attribute}
    out: list = []
    for item in (x.strip() for x in split_outside_parens(text)):
        if not item:
            raise InputError(f"--preserve has an empty item: {text!r}")
        if item.startswith("auto"):
            parse_auto(item)  # raises for a malformed option
            out.append(item)
            continue
        if any(sep in item for sep in ("->", "=>", ":")):
            a, b = parse_pair(item, "--preserve pairs")
            if world is not None:
                world.attribute(a, b)
            out.append((a, b))
            continue
        if world is None:
            raise InputError(f"--preserve {item!r}: attribute names work on ShapesWorld and the other embedded "
                             "worlds; for this model give word pairs, e.g. --preserve circle->square")
        if item not in world.keys():
            raise InputError(f"unknown attribute {item!r} to preserve; known: {', '.join(world.keys())}")
        if item in edited:
            raise InputError(f"cannot preserve {item!r}: it is the attribute being edited")
        out.append(item)
    return out


def split_outside_parens(text: str) -> list[str]:
    """Split at commas that are not inside parentheses (``auto(k=1,remove=0),shape`` is two items)."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return out + [cur]


def floats(text: str, name: str) -> list[float]:

    from .errors import InputError

    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise InputError(f"{name} must be comma-separated numbers, got {text!r}") from e
    if not vals:
        raise InputError(f"{name} is empty")
    if not all(math.isfinite(v) for v in vals):
        raise InputError(f"{name} must be finite numbers (no nan/inf), got {text!r}")
    return vals
