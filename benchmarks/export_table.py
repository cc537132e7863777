"""Export every registered model to ONNX and .pt2 at its default size, each checked as ``moderncnn export`` checks
it; one row per (model, format): the exporter used, the max difference from PyTorch, file size and time.

    nice -n 19 python benchmarks/export_table.py               # all models, both formats -> docs/results/...
    python benchmarks/export_table.py --models lenet,lenet5 --formats onnx

Prints a Markdown table (docs/export.md holds the last full one) and writes the rows as JSON. A failed export
is a row with its reason (the reason REFUSED in moderncnn/export.py must then give), not an abort.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import moderncnn  # noqa: E402
from moderncnn.export import FORMATS, ExportError, export  # noqa: E402

from _cli import model_names, run  # noqa: E402
from _results import write  # noqa: E402


def export_row(name: str, fmt: str, folder: Path) -> dict:
    path = folder / f"{name}.{fmt}"
    try:
        r = export(name, fmt, path)
    except ExportError as e:
        return {"model": name, "format": fmt, "ok": False, "reason": str(e)}
    finally:
        for leftover in folder.glob(f"{name}.{fmt}*"):
            leftover.unlink()  # a 550 MB VGG file at a time is enough
    return {"model": name, "format": fmt, "ok": True, "exporter": r.exporter, "opset": r.metadata.get("opset"),
            "input": r.metadata["input"], "max_abs_diff": r.max_abs_diff, "allowed": r.allowed,
            "batch_sizes": list(r.batch_sizes), "size_bytes": r.size_bytes, "seconds": round(r.seconds, 2),
            "checked_with": r.checked_with, "fallback_reason": r.fallback_reason}


def markdown(rows: list[dict]) -> str:
    lines = ["| model | format | input | exporter | max difference (allowed) | file size | time |",
             "|---|---|---|---|---:|---:|---:|"]
    for r in rows:
        if r["ok"]:
            exporter = r["exporter"] + (f", opset {r['opset']}" if r["format"] == "onnx" else "")
            lines.append(f"| `{r['model']}` | {r['format']} | {r['input']} | {exporter} | {r['max_abs_diff']:.1e} "
                         f"({r['allowed']:.0e}) | {r['size_bytes'] / 1e6:,.1f} MB | {r['seconds']:.1f} s |")
        else:
            lines.append(f"| `{r['model']}` | {r['format']} | - | refused: {r['reason']} | - | - | - |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=model_names, default=None,
                        help="comma-separated models (default: every registered model)")
    parser.add_argument("--formats", default=",".join(FORMATS),
                        help="comma-separated: onnx, pt2 or both (default %(default)s)")
    parser.add_argument("--json", default=None, metavar="FILE",
                        help="write the results here (default: docs/results/MACHINE/)")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    formats = args.formats.split(",")
    if not set(formats) <= set(FORMATS):
        raise ValueError(f"--formats takes {', '.join(FORMATS)}, got {args.formats!r}")
    rows, names = [], args.models or moderncnn.list_models()
    target = None
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            for fmt in formats:
                rows.append(export_row(name, fmt, Path(tmp)))
                r = rows[-1]
                print(f"{name} {fmt}: " + (f"{r['max_abs_diff']:.1e} {r['size_bytes'] / 1e6:.1f} MB "
                                           f"{r['seconds']:.1f} s" if r["ok"] else f"FAILED {r['reason']}"),
                      file=sys.stderr, flush=True)
                # after every row: a table that takes an hour on a busy machine keeps what it has if stopped
                complete = len(rows) == len(names) * len(formats)
                target = write({"complete": complete, "rows": rows}, "export-table", torch.device("cpu"),
                               path=args.json or target)
    print(markdown(rows))


if __name__ == "__main__":
    run(main)
