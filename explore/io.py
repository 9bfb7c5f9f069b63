"""Atomic writes and the JSON envelope every command writes (DESIGN §0).

Atomic: write to a temporary file in the same folder, ``fsync``, then ``os.replace`` — a reader sees
the old file or the new one, never half of one, and an interrupted run loses nothing it had saved.
"""

from __future__ import annotations

import io as _io
import json
import math
import os
import platform
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .errors import CorruptFileError, InputError, WriteError


def _new_file_mode(path: Path) -> int:
    """The mode a file written at ``path`` gets: an existing file's own, else 0o666 less the umask."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


def write_error(path, e: OSError, what: str = "write") -> WriteError:
    """A `WriteError` naming ``path`` and the cause of ``e`` (no space left, permission denied, ...)."""
    cause = e.strerror or str(e) or type(e).__name__
    return WriteError(f"cannot {what} {path}: {cause}", path=path, errno=e.errno)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` whole or not at all (temporary file, fsync, rename).

    The file gets the mode a plain ``open(path, "w")`` would give (0o666 less the umask, or the
    replaced file's own mode), so a shared folder stays readable. Any failure (full disk, read-only
    folder, no permission) is a `WriteError` naming ``path`` and its cause; the old file, if any, is
    left as it was and no temporary file is left behind.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = _new_file_mode(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise write_error(path, e) from e
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:  # numpy / torch scalars
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return _jsonable(obj.tolist())
    return str(obj)


def dumps(obj: Any) -> str:
    return json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, dumps(obj))


def replace_folder(new: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Swap the finished folder ``new`` in at ``dest`` (the old one moved aside, then deleted).

    The one way a model folder (or a part of one, such as its ``vae/``) is replaced: ``dest`` is
    always either the whole old folder or the whole new one, never a half-written mix.
    """
    new, dest = Path(new), Path(dest)
    old = dest.with_name(dest.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if dest.exists():
        dest.rename(old)
    new.rename(dest)
    if old.exists():
        shutil.rmtree(old)
    return dest


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file's content; a file that is not UTF-8 JSON is a `CorruptFileError` naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise CorruptFileError(f"{path} is not UTF-8 text (byte {e.start}); delete or restore it") from e
    except json.JSONDecodeError as e:
        raise CorruptFileError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); delete or restore it") from e
    except IsADirectoryError as e:
        raise InputError(f"{path} is a folder, not a JSON file") from e


MODEL_JSON = "explore.json"


def write_model_json(folder: str | os.PathLike, data: Mapping[str, Any]) -> Path:
    """Write a model folder's ``explore.json`` (what `load_pipeline` reads into a `ModelSpec`), atomically.

    The one writer of that file: `explore.pipeline.load.save_spec` and the world trainers use it.
    """
    return atomic_write_json(Path(folder) / MODEL_JSON, data)


def append_jsonl(path: str | os.PathLike, records) -> None:
    """Append whole JSON lines in one write, flushed and fsynced (a kill leaves at most a partial last line).

    A failed write (full disk, ...) is a `WriteError`; what it may have half-written is cut off again,
    so the file holds whole lines only.
    """
    data = "".join(dumps(r).replace("\n", " ").strip() + "\n" for r in records).encode("utf-8")
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)  # the umask applies
        try:
            size = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except OSError:
                try:
                    os.ftruncate(fd, size)
                except OSError:  # a device or a file system that cannot truncate: the first error is the news
                    pass
                raise
        finally:
            os.close(fd)
    except OSError as e:
        raise write_error(path, e) from e


def check_writable(path: str | os.PathLike, what: str = "output", *, folder: bool | None = None) -> Path:
    """Raise `InputError` now, before any work, if ``path`` (a file to write, or a folder) cannot be written.

    ``folder``: True — ``path`` is a folder to create or write into (an existing file there is an error);
    False — a file to write (an existing folder there is an error); None — either.
    Checked: the nearest existing ancestor is a folder (not a regular file, which no one can write
    under, root included) with write permission, and an existing file is not read-only.
    """
    path = Path(path)
    if folder is False and path.is_dir():
        raise InputError(f"cannot write the {what} {path}: it is a folder; give a file name")
    if folder is True and path.exists() and not path.is_dir():
        raise InputError(f"cannot write the {what} {path}: it is a file, not a folder")
    probe = path if path.is_dir() else path.parent
    while not probe.exists() and probe != probe.parent:  # the nearest existing ancestor must be a writable folder
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"cannot write the {what} {path}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"cannot write the {what} {path}: no write permission in {probe}")
    if path.is_file() and not os.access(path, os.W_OK):
        raise InputError(f"cannot write the {what} {path}: the file is read-only")
    _probe_write(path if folder else path.parent, path, what)
    return path


def _probe_write(folder: Path, path: Path, what: str) -> None:
    """Create ``folder`` (as the write will) and a file in it, then undo both: the permission bits
    do not tell everything (a read-only file system, /proc, a full quota, root's own limits)."""
    made = []
    probe = folder
    while not probe.exists() and probe != probe.parent:
        made.append(probe)
        probe = probe.parent
    try:
        for d in reversed(made):
            d.mkdir()
        fd, tmp = tempfile.mkstemp(prefix=".explore-probe-", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise InputError(f"cannot write the {what} {path}: {e.strerror or e}") from e
    finally:
        for d in made:
            try:
                d.rmdir()
            except OSError:
                pass


def save_image(path: str | os.PathLike, image) -> Path:
    """Save a PIL image atomically (format from the suffix)."""
    buf = _io.BytesIO()
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG"}.get(Path(path).suffix.lower(), "PNG")
    image.save(buf, format=fmt)
    return atomic_write_bytes(path, buf.getvalue())


def save_figure(path: str | os.PathLike, fig, dpi: int = 100) -> Path:
    """Save a matplotlib figure atomically."""
    buf = _io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", dpi=dpi, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


# ---------------------------------------------------------------------------------------------
# The JSON envelope
# ---------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """CPU model and count, GPU name (or None): where a result was measured."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        cpus = os.cpu_count() or 1
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": _cpu_model(), "cpu_count": cpus, "torch_threads": torch.get_num_threads(), "gpu": gpu}


def machine_summary(m: Mapping[str, Any] | None = None) -> str:
    m = m or machine()
    return f"{m['gpu']}" if m.get("gpu") else f"{m['cpu_count']}x {m['cpu']} (CPU)"


def envelope(model: str, seed: int | None, settings: Mapping[str, Any], seconds: float, **own: Any) -> dict:
    """The keys every JSON written by a command starts with (DESIGN §0), then its own keys."""
    # diffusers / transformers take ~1 s to import: only what writes a result needs their versions
    import diffusers
    import transformers

    from . import __version__

    out = {
        "explore_version": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "model": model,
        "seed": seed,
        "settings": dict(settings),
        "machine": machine(),
        "seconds": round(float(seconds), 3),
    }
    out.update(own)
    return out
