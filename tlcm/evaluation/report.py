"""The result files: a JSON with every setting and number, and the run as a row of the paper's Table 1.

The paper's rows sit beside ours as constants with their source, so a reader sees at once what a number
is compared with, and the notes under the table say what differs (metric backbones, FID reference, N,
device): the paper's scripts are not published, so no row of ours is the paper's measurement redone.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..files import atomic_write_text

PAPER_SOURCE = ("TLCM paper (Xie et al., arXiv 2406.05768), Table 1: MSCOCO-2017 5K, SDXL 1024², "
                "Time = seconds per image on an A100")
TABLE_COLUMNS = ("Method", "N", "Time", "FID", "CS", "AS", "IR")

# (method, N, time s, FID, CS, AS, IR), TLCM paper Table 1.
PAPER_TABLE1: tuple[tuple[str, int, float, float, float, float, float], ...] = (
    ("DDIM", 25, 3.29, 23.29, 33.97, 5.87, 0.82),
    ("LCM", 4, 0.71, 27.09, 32.53, 5.85, 0.51),
    ("TLCM", 2, 0.58, 27.50, 33.18, 5.90, 0.97),
    ("TLCM", 3, 0.65, 29.12, 33.68, 5.97, 1.00),
    ("TLCM", 4, 0.71, 30.33, 33.52, 6.06, 1.01),
    ("TLCM", 5, 0.78, 30.90, 33.69, 6.04, 1.01),
    ("TLCM", 6, 0.85, 30.98, 33.71, 6.07, 1.01),
    ("TLCM", 8, 0.99, 32.40, 33.53, 6.08, 1.02),
)


def _cell(value, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def table_row(result: dict) -> str:
    """This run as one Markdown row: Method | N | Time | FID | CS | AS | IR (– where not computed)."""
    sampler, metrics = result["sampler"], result["metrics"]
    method = f"{sampler['label']} (this run, {sampler['spec']})"
    fid = metrics.get("fid", {}).get("value")
    fid_cell = _cell(fid)
    if fid is None and metrics.get("fid_to_teacher", {}).get("value") is not None:
        fid_cell = f"{metrics['fid_to_teacher']['value']:.2f} (to teacher)"
    cells = [method, str(sampler["steps"]), _cell(result["timing"]["median_seconds_per_image"]), fid_cell,
             _cell(metrics.get("clip_score", {}).get("value")), _cell(metrics.get("aesthetic_score", {}).get("value")),
             _cell(metrics.get("image_reward", {}).get("value"))]
    return "| " + " | ".join(cells) + " |"


def markdown_table(result: dict) -> str:
    """The paper's rows (SDXL runs only: the paper publishes none for FLUX), then this run's, then what the
    row's numbers are (so they are not misread)."""
    flux = result["model"].get("family") == "flux"
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for method, n, *values in () if flux else PAPER_TABLE1:
        lines.append("| " + " | ".join([f"{method} (paper)", str(n)] + [f"{v:.2f}" for v in values]) + " |")
    lines.append(table_row(result))
    metrics, timing = result["metrics"], result["timing"]
    network = "transformer" if flux else "UNet"
    notes = ["Paper rows: none; the paper's Table 1 is SDXL only." if flux else f"Paper rows: {PAPER_SOURCE}.",
             f"This run: {result['prompts']['count']} prompts of {result['prompts']['set']} "
             f"(sha256 of the list {result['prompts']['list_sha256'][:16]}…), seeds {result['seeds']['base']} + index, "
             f"{result['size']['width']}x{result['size']['height']}, Time = median seconds per image on "
             f"{timing['device']} ({timing['dtype']}), {timing['median_unet_evals_per_image']:g} {network} evaluations per image."]
    for key in ("fid", "fid_to_teacher", "clip_score", "aesthetic_score", "image_reward"):
        entry = metrics.get(key, {})
        if entry.get("value") is None:
            notes.append(f"{entry.get('label', key)}: not computed: {entry.get('not_computed', 'not requested')}.")
        else:
            notes.append(f"{entry['label']}: {entry['value']:.4f} ({entry.get('variant_text', '')}).")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {note}" for note in notes) + "\n"


def write_results(out_dir: str | Path, result: dict) -> tuple[Path, Path]:
    """``eval.json`` and ``table1.md`` in ``out_dir``, each written atomically."""
    out_dir = Path(out_dir)
    json_path = atomic_write_text(out_dir / "eval.json", json.dumps(result, indent=2, sort_keys=True) + "\n")
    md_path = atomic_write_text(out_dir / "table1.md", "# TLCM evaluation\n\n" + markdown_table(result))
    return json_path, md_path
