"""The paper's Table 1 in toy form: does data-free TLCM beat the teacher's own few-step sampling?

Rows (each at 2, 3, 4, 8 steps): the teacher's trailing DDIM with and without CFG (its strongest few-step
form), a single-segment LCM-style data-free distillation at the same budget (M = 1, stage 1 only, the
same number of student steps and batch as TLCM's two stages), TLCM stage 1 only (the same run's
checkpoint at the end of MLCD) and TLCM stage 1 + 2; plus the teacher's DDIM-25 + CFG reference. Students
are merged through the core's kohya loader and sampled with ``TLCMScheduler``; metrics per
``tlcm_toy/evaluate.py``. Every student is trained once per training seed; its rows are the mean and sample
standard deviation over those runs. Runs are kept under ``--work`` and reused when finished.

    python bench/toy_table1.py --out bench/results/toy_table1     # the committed results
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tlcm_toy.bench_teacher import load_teacher  # noqa: E402
from tlcm_toy.distill import toy_config  # noqa: E402
from tlcm_toy.evaluate import (Sampler, clearly_below, markdown_table, mean_over_seeds, score_samplers,  # noqa: E402
                               summarise)
from tlcm_toy.evaluator import load_evaluator  # noqa: E402
from tlcm_toy.runs import (bench_parser, check_train_seeds, checkpoint, student_pipe, train_run,  # noqa: E402
                           wall_seconds, write_results)

STEPS = (2, 3, 4, 8)


TEACHER_REFERENCE = "teacher DDIM-25 w=3"


def targets(summary: dict, n_runs: int, n_noise: int) -> list[tuple[str, bool, bool, str]]:
    """The targets: (what, met by the means, supported by the spread, the numbers behind it)."""
    ref, t4, t2 = summary[TEACHER_REFERENCE], summary["TLCM stage 1+2, 4 steps"], summary["TLCM stage 1+2, 2 steps"]
    teacher2 = min((summary[f"teacher DDIM-2 w={w}"] for w in (1, 3)), key=lambda row: row["fd"][0])
    lcm2 = summary["LCM-style (M=1), 2 steps"]

    def row(what: str, a: list, n_a: int, b: list, n_b: int, numbers: str) -> tuple[str, bool, bool, str]:
        return what, a[0] < b[0], clearly_below(a, b, n_a, n_b), numbers

    scaled = lambda r, k: [k * r[0], None if r[1] is None else k * r[1]]  # noqa: E731
    lowered = lambda r, d: [r[0] - d, r[1]]  # noqa: E731
    return [
        row("TLCM-4 attribute accuracy within 3 points of teacher-25", lowered(ref["acc_all"], 0.03), n_noise,
            t4["acc_all"], n_runs, f"{t4['acc_all'][0]:.3f} vs {ref['acc_all'][0]:.3f}"),
        row("TLCM-4 FD <= 1.5x teacher-25", t4["fd"], n_runs, scaled(ref["fd"], 1.5), n_noise,
            f"{t4['fd'][0]:.1f} vs 1.5 x {ref['fd'][0]:.1f}"),
        row("TLCM-2 FD < teacher's best 2-step FD", t2["fd"], n_runs, teacher2["fd"], n_noise,
            f"{t2['fd'][0]:.1f} vs {teacher2['fd'][0]:.1f}"),
        row("TLCM-2 FD < LCM-style baseline at 2 steps", t2["fd"], n_runs, lcm2["fd"], n_runs,
            f"{t2['fd'][0]:.1f} vs {lcm2['fd'][0]:.1f}"),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser(__doc__.splitlines()[0], "toy_table1", train_seeds=True, noise_seeds=[0, 1])
    parser.add_argument("--mlcd-steps", type=int, default=160, help="tlcm_toy/toy.yaml's (the demo's)")
    parser.add_argument("--lcd-steps", type=int, default=80, help="tlcm_toy/toy.yaml's (the demo's)")
    args = parser.parse_args(argv)
    if args.render:
        return write(json.loads(args.out.with_suffix(".json").read_text()), args.out)
    check_train_seeds(parser, args)
    torch.set_num_threads(args.threads)
    s1, s2 = args.mlcd_steps, args.lcd_steps
    teacher, evaluator = load_teacher(), load_evaluator()
    reference = Sampler(TEACHER_REFERENCE, teacher, 25, 3.0)
    teachers = [reference] + [Sampler(f"teacher DDIM-{n} w={w:g}", teacher, n, w) for n in STEPS for w in (1.0, 3.0)]
    teacher_per_seed = [score_samplers(teachers, reference, evaluator, args.n, seed)[0] for seed in args.seeds]
    per_run, train_seconds = [], {}
    for train_seed in args.train_seeds:
        seed_arg = f"train.seed={train_seed}"
        tlcm = train_run(args.work / f"tlcm-seed{train_seed}",
                         [f"mlcd.steps={s1}", f"lcd.steps={s2}", f"output.checkpoint_every={s1}", seed_arg])
        lcm = train_run(args.work / f"lcm-seed{train_seed}",
                        ["distill.num_segments=1", f"mlcd.steps={s1 + s2}", "lcd.steps=0", seed_arg])
        alpha = toy_config(args.work / "tlcm").lora.alpha
        students = {"LCM-style (M=1)": student_pipe(checkpoint(lcm, s1 + s2), alpha),
                    "TLCM stage 1": student_pipe(checkpoint(tlcm, s1), alpha),
                    "TLCM stage 1+2": student_pipe(checkpoint(tlcm, s1 + s2), alpha)}
        samplers = [Sampler(f"{name}, {n} steps", pipe, n, scheduler="tlcm") for name, pipe in students.items()
                    for n in STEPS]
        per_run.append(mean_over_seeds([score_samplers(samplers, reference, evaluator, args.n, seed)[0]
                                        for seed in args.seeds]))
        train_seconds[train_seed] = {"tlcm": round(wall_seconds(tlcm)), "lcm": round(wall_seconds(lcm))}
    students = summarise([{k: v for k, v in run.items() if not k.startswith("teacher")} for run in per_run])
    summary = {**summarise(teacher_per_seed), **students}      # the teacher's spread is over noise seeds only
    config = toy_config(args.work / "tlcm")
    record = dict(command="python bench/toy_table1.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                  mlcd_steps=s1, lcd_steps=s2, batch=config.train.batch_size, guidance=config.distill.guidance_scale,
                  lora_rank=config.lora.rank, mlcd_lr=config.mlcd.lr, lcd_lr=config.lcd.lr, n=args.n,
                  seeds=args.seeds, train_seeds=args.train_seeds, train_seconds=train_seconds, threads=args.threads,
                  summary=summary, teacher_per_seed=teacher_per_seed, per_run=per_run)
    write(record, args.out)


CAVEATS = """## Reading it

- Teacher rows: one teacher; ± is the sample standard deviation over the noise seeds. Student rows: one
  training run per training seed, each scored as the mean over the noise seeds; ± is the sample standard
  deviation over the training runs. Both ddof = 1.
- A target is "supported" when a 95% t-interval of the difference of means excludes 0 (degrees of freedom
  from the smaller group: with 2 noise seeds on the teacher side that interval is wide); "met by the means
  only" says nothing beyond the order of the means.
- fd is the distance to real toy images, fd_teacher25 to the teacher's own DDIM-25 + CFG samples: a
  student can be closer to the real data than the teacher is and still far from the teacher's samples
  (a distilled model is not bound to its teacher's errors, and the TLCM sampler re-noises with fresh noise
  where DDIM is deterministic).
- Compare methods on their own column sets; a gap smaller than the spread is not a difference.
- s_per_image is wall time on a shared 2-core CPU (other jobs ran beside the scoring): it orders the
  samplers, it is not a speed figure (bench/results/scheduler_overhead.md is).
"""


def write(record: dict, out: Path) -> None:
    """Render ``record`` as markdown beside its JSON (``--render`` redoes only this, from the JSON)."""
    s1, s2, seeds, runs = record["mlcd_steps"], record["lcd_steps"], record["seeds"], record["train_seeds"]
    record.pop("targets", None)                                # judged here, from the summary, every render
    checks = targets(record["summary"], len(runs), len(seeds))
    verdict = lambda ok, sure: ("met, supported by the spread" if sure else  # noqa: E731
                                "met by the means only" if ok else "MISSED")
    text = (f"# Toy Table 1: TLCM vs the teacher's few-step sampling\n\n`{record['command']}`\n\n"
            f"Toy teacher (tlcm_toy/weights/teacher), data-free distillation with `tlcm_toy/toy.yaml`: "
            f"TLCM = {s1} MLCD + {s2} LCD steps; LCM-style = M = 1, {s1 + s2} stage-1 steps (same budget); batch "
            f"{record['batch']}, teacher CFG w = {record['guidance']:g}, LoRA rank {record['lora_rank']}, lr "
            f"{record['mlcd_lr']:g} / {record['lcd_lr']:g}. Training seeds {runs} (one run each per method), "
            f"training wall time per seed (s, {record['threads']} threads, CPU): {record['train_seconds']}. "
            f"N = {record['n']} prompts per row, noise seeds {seeds}. Students sample with TLCMScheduler (no CFG, "
            f"1 UNet evaluation per step); teacher rows with trailing DDIM.\n\n"
            + markdown_table(record["summary"]) + "\n## Targets\n\n"
            + "\n".join(f"- {verdict(ok, sure)}: {what} ({numbers})" for what, ok, sure, numbers in checks)
            + "\n\n" + CAVEATS)
    write_results(record, text, out)


if __name__ == "__main__":
    main()
