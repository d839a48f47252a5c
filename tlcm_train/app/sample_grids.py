"""The trainer's sample grids as the Run tab shows them: whole (never cropped to a thumbnail), every cell
scaled to one readable size, and labelled with the training step and each column's sampling-step count.

A grid file (``samples/step-NNNNNNNN.png``, ``tlcm_train.samples.save_grid``) has one row per sample prompt
and one column per ``output.sample_steps`` entry, with no text in it; the run's config snapshot says
which. Without a snapshot that fits the grid's size, the grid is shown as it is with its step only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

CELL = 160              # pixels of a cell's longer side as shown (toy cells are 32 px, SDXL's 1024)
HEADER = 44             # pixels above the cells for the step and the column labels
FONT_SIZE = 14


def grid_step(path: Path) -> int:
    """The training step in a grid's file name."""
    return int(path.stem.split("-")[1])


def caption(step: int, sample_steps: Sequence[int]) -> str:
    columns = " / ".join(str(n) for n in sample_steps)
    return f"step {step} · columns: {columns} sampling steps" if sample_steps else f"step {step}"


def first_sample_step(step: int, every: int, total: int) -> int | None:
    """The step at which the next grid is written (a multiple of ``every``, and the last step), or None
    when sampling is off."""
    if every <= 0:
        return None
    following = (step // every + 1) * every
    return min(following, total) if total else following


def labelled(path: Path, sample_steps: Sequence[int], rows: int) -> tuple[Image.Image, str]:
    """The grid at ``path`` with a header (step; one label per column) and its caption."""
    step = grid_step(path)
    with Image.open(path) as image:
        grid = image.convert("RGB")
    columns = len(sample_steps)
    if not columns or rows < 1 or grid.width % columns or grid.height % rows:
        return grid, caption(step, ())
    cell_w, cell_h = grid.width // columns, grid.height // rows
    scale = CELL / max(cell_w, cell_h)
    size = (max(1, round(cell_w * scale)), max(1, round(cell_h * scale)))
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS   # toy pixels stay crisp
    canvas = Image.new("RGB", (size[0] * columns, HEADER + size[1] * rows), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=FONT_SIZE)
    draw.text((4, 3), f"training step {step}", fill="black", font=font)
    for col, n in enumerate(sample_steps):
        draw.text((col * size[0] + 4, HEADER - FONT_SIZE - 6), f"{n} step{'s' if n != 1 else ''}",
                  fill="#1d4ed8", font=font)
        for row in range(rows):
            cell = grid.crop((col * cell_w, row * cell_h, (col + 1) * cell_w, (row + 1) * cell_h))
            canvas.paste(cell.resize(size, resample), (col * size[0], HEADER + row * size[1]))
    return canvas, caption(step, sample_steps)


def note(has_grids: bool, every: int, sample_steps: Sequence[int], step: int, total: int, prompts: int) -> str:
    """The line above the gallery: when the first grid comes, or how to read the grids."""
    if every <= 0 or prompts == 0:
        return ("Sample grids are off (Setup: *sample every* is 0 or there are no sample prompts).")
    columns = " / ".join(str(n) for n in sample_steps)
    layout = f"rows: the {prompts} sample prompt{'s' if prompts != 1 else ''}; columns: {columns} sampling steps"
    if has_grids:
        return f"A grid every {every} steps, newest first ({layout})."
    first = first_sample_step(step, every, total)
    return f"No sample grid yet: first samples at step {first}, then every {every} steps ({layout})."
