"""The paper's Table 1 in toy form: does data-free TLCM beat the teacher's own few-step sampling?

Rows (each at 2, 3, 4, 8 steps): the teacher's trailing DDIM with and without CFG (its strongest few-step
form), a single-segment LCM-style data-free distillation at the same budget (M = 1, stage 1 only, the
same number of student steps and batch as TLCM's two stages), TLCM stage 1 only (the same run's
checkpoint at the end of MLCD) and TLCM stage 1 + 2; plus the teacher's DDIM-25 + CFG reference. Students
are merged through the core's kohya loader and sampled with ``TLCMScheduler``; metrics per
``tlcm_toy/evaluate.py`` over several noise seeds. Runs are kept under ``--work`` and reused when finished.

    python bench/toy_table1.py       # writes bench/results/toy_table1.md + .json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tlcm_toy.bench_teacher import load_teacher  # noqa: E402
from tlcm_toy.distill import toy_config  # noqa: E402
from tlcm_toy.evaluate import Sampler, markdown_table, score_samplers, summarise  # noqa: E402
from tlcm_toy.evaluator import load_evaluator  # noqa: E402
from tlcm_toy.runs import checkpoint, student_pipe, train_run, wall_seconds  # noqa: E402

STEPS = (2, 3, 4, 8)


def targets(summary: dict) -> list[tuple[str, bool, str]]:
    """The issue's targets, each with whether it is met and the numbers behind it."""
    m = {name: {k: v[0] for k, v in row.items()} for name, row in summary.items()}
    ref, t4, t2 = m["teacher DDIM-25 w=3"], m["TLCM stage 1+2, 4 steps"], m["TLCM stage 1+2, 2 steps"]
    best_teacher2 = min(m["teacher DDIM-2 w=1"]["fd"], m["teacher DDIM-2 w=3"]["fd"])
    lcm2 = m["LCM-style (M=1), 2 steps"]["fd"]
    return [
        ("TLCM-4 attribute accuracy within 3 points of teacher-25", ref["acc_all"] - t4["acc_all"] <= 0.03,
         f"{t4['acc_all']:.3f} vs {ref['acc_all']:.3f}"),
        ("TLCM-4 FD <= 1.5x teacher-25", t4["fd"] <= 1.5 * ref["fd"], f"{t4['fd']:.1f} vs 1.5 x {ref['fd']:.1f}"),
        ("TLCM-2 FD < teacher's best 2-step FD", t2["fd"] < best_teacher2, f"{t2['fd']:.1f} vs {best_teacher2:.1f}"),
        ("TLCM-2 FD < LCM-style baseline at 2 steps", t2["fd"] < lcm2, f"{t2['fd']:.1f} vs {lcm2:.1f}"),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mlcd-steps", type=int, default=300)
    parser.add_argument("--lcd-steps", type=int, default=100)
    parser.add_argument("--n", type=int, default=250)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "bench" / "toy")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "toy_table1")
    parser.add_argument("--render", action="store_true", help="only rewrite the .md from the existing .json")
    args = parser.parse_args(argv)
    if args.render:
        return write(json.loads(args.out.with_suffix(".json").read_text()), args.out)
    torch.set_num_threads(args.threads)
    s1, s2 = args.mlcd_steps, args.lcd_steps
    tlcm = train_run(args.work / "tlcm", [f"mlcd.steps={s1}", f"lcd.steps={s2}", f"output.checkpoint_every={s1}"])
    lcm = train_run(args.work / "lcm", ["distill.num_segments=1", f"mlcd.steps={s1 + s2}", "lcd.steps=0"])
    config = toy_config(args.work / "tlcm")
    teacher = load_teacher()
    students = {"LCM-style (M=1)": student_pipe(checkpoint(lcm, s1 + s2), config.lora.alpha),
                "TLCM stage 1": student_pipe(checkpoint(tlcm, s1), config.lora.alpha),
                "TLCM stage 1+2": student_pipe(checkpoint(tlcm, s1 + s2), config.lora.alpha)}
    reference = Sampler("teacher DDIM-25 w=3", teacher, 25, 3.0)
    samplers = [reference]
    for n in STEPS:
        samplers += [Sampler(f"teacher DDIM-{n} w={w:g}", teacher, n, w) for w in (1.0, 3.0)]
    for name, pipe in students.items():
        samplers += [Sampler(f"{name}, {n} steps", pipe, n, scheduler="tlcm") for n in STEPS]
    evaluator = load_evaluator()
    per_seed = [score_samplers(samplers, reference, evaluator, args.n, seed)[0] for seed in args.seeds]
    summary = summarise(per_seed)
    checks = targets(summary)
    record = dict(command="python bench/toy_table1.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                  mlcd_steps=s1, lcd_steps=s2, batch=config.train.batch_size, guidance=config.distill.guidance_scale,
                  lora_rank=config.lora.rank, mlcd_lr=config.mlcd.lr, lcd_lr=config.lcd.lr, n=args.n, seeds=args.seeds,
                  train_seconds={"tlcm": round(wall_seconds(tlcm)), "lcm": round(wall_seconds(lcm))}, threads=args.threads,
                  targets=[dict(target=t, met=ok, numbers=x) for t, ok, x in checks],
                  summary=summary, per_seed=per_seed)
    write(record, args.out)


CAVEATS = """## Reading it

- One training run per method (training seed 0); the spread is over sampling noise only.
- Position is at chance (~0.25) for every row, the teacher included (bench/results/toy_teacher.md), so
  acc_all cannot exceed ~0.25; shape, colour and texture carry the signal.
- A student's FD to real images can fall below the teacher's own: fd_teacher25 shows that the students'
  samples are not simply closer to the teacher's (a distilled model is not bound to its teacher's errors,
  and the TLCM sampler re-noises with fresh noise where DDIM is deterministic).
- Compare methods on their own column sets; a gap smaller than the ± spread is not a difference.
"""


def write(record: dict, out: Path) -> None:
    """Render ``record`` as markdown beside its JSON (``--render`` redoes only this, from the JSON)."""
    s1, s2, seeds = record["mlcd_steps"], record["lcd_steps"], record["seeds"]
    text = (f"# Toy Table 1: TLCM vs the teacher's few-step sampling\n\n`{record['command']}`\n\n"
            f"Toy teacher (tlcm_toy/weights/teacher), data-free distillation with `tlcm_toy/toy.yaml`: "
            f"TLCM = {s1} MLCD + {s2} LCD steps; LCM-style = M = 1, {s1 + s2} stage-1 steps (same budget); batch "
            f"{record['batch']}, teacher CFG w = {record['guidance']:g}, LoRA rank {record['lora_rank']}, lr "
            f"{record['mlcd_lr']:g} / {record['lcd_lr']:g}; training wall time {record['train_seconds']['tlcm']} s (TLCM) and "
            f"{record['train_seconds']['lcm']} s (LCM-style) on this CPU, 1 thread each, sharing it with other jobs. "
            f"N = {record['n']} prompts per row, noise seeds {seeds} (mean ± std over seeds). Students sample "
            f"with TLCMScheduler (no CFG, 1 UNet evaluation per step); teacher rows with trailing DDIM.\n\n"
            + markdown_table(record["summary"], len(seeds)) + "\n## Targets (issue 5)\n\n"
            + "\n".join(f"- {'met' if t['met'] else 'MISSED'}: {t['target']} ({t['numbers']})" for t in record["targets"])
            + "\n\n" + CAVEATS)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
