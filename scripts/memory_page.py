"""Write the tables of docs/results/memory.md from the JSON of `python -m explore bench --estimate`.

    python scripts/memory_page.py docs/results/json/memory_*.json > /tmp/tables.md

One table per JSON file: a row per architecture, a column per method, each cell the estimated peak
with every component resident / with model CPU offload (GB, 1e9 bytes), and whether it fits the
``--device-gb`` the estimate was run for.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def table(path: Path) -> str:
    data = json.loads(path.read_text())
    s = data["settings"]
    rows: dict[str, dict[str, dict]] = {}
    for e in data["estimates"]:
        rows.setdefault(e["model"], {})[e["method"]] = e
    methods = list(dict.fromkeys(e["method"] for e in data["estimates"]))
    label = {"hsds": "hsds"}
    if s.get("jvp_chunk"):
        label["hsds"] = f"hsds (jvp_chunk {s['jvp_chunk']})"
    if s.get("hessian"):
        label["hsds"] = f"hsds ({s['hessian']})"
    head = (f"**{path.name}**: {s['res']}², {s['dtype']}, quantisation {s['quantization'] or 'none'}; "
            f"cells: resident / model offload, GB; ✓ fits {s['device_gb']:g} GB with the 10 % margin "
            f"(resident / offload)\n\n")
    lines = ["| architecture | " + " | ".join(label.get(m, m) for m in methods) + " |",
             "|---|" + "---|" * len(methods)]
    for model, per in rows.items():
        cells = []
        for m in methods:
            e = per.get(m)
            if e is None:
                cells.append("")
            elif "unsupported" in e:
                cells.append("n/a")
            else:
                fit = e.get("fits", {})
                mark = "".join("✓" if fit.get(k) else "✗" for k in ("resident", "offload")) if fit else ""
                cells.append(f"{e['peak_gb']:.1f} / {e['peak_gb_offload']:.1f} {mark}".strip())
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


if __name__ == "__main__":
    print("\n".join(table(Path(p)) for p in sys.argv[1:]))
