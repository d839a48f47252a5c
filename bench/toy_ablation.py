"""The paper's Tables 2 and 3 in toy form: each technique added in turn, and stage 2's teacher steps p,
over several training seeds.

For each training seed, the TLCM run of ``bench/toy_table1.py`` (same ``--work``, same stage lengths) gives
rows ① (end of stage 1) and ② (end of stage 2); every later row branches from a checkpoint of an earlier
one of the same seed (exact resume into the next stage, so rows share their history and differ by the added
term only):

* ③ ② with the latent LPIPS distance (toy weights, tlcm_toy/weights/lpips.safetensors) in both stages;
* ④ ② + stage 3 (MPS preference loss with the toy scorer, tlcm_toy/weights/scorer.safetensors);
* ⑤ ④ + stage 4 with distribution matching only; ⑥ ④ + stage 4 with DMD and the GAN term;
* ②+DM: ② + stage 4 with distribution matching only (the rollout branch of ``bench/toy_fake_data.py``);
* with ``--table3``, the paper's Table 3: stage 2 with p = 1, 2, 4 teacher steps, each branched from the end
  of stage 1 (② is p = 3).

All rows at 4 TLCM steps, metrics per ``tlcm_toy/evaluate.py``. Rows are mean ± sample std over training
runs (each the mean of its noise seeds); what a term changes is the paired difference from its parent row
within each run, with a 95% t-interval.

    python bench/toy_ablation.py --out bench/results/toy_ablation --table3     # the committed results
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tlcm_toy.bench_teacher import load_teacher  # noqa: E402
from tlcm_toy.distill import WEIGHTS, toy_config  # noqa: E402
from tlcm_toy.evaluate import (Sampler, markdown_table, mean_over_seeds, paired_difference,  # noqa: E402
                               score_samplers, summarise)
from tlcm_toy.evaluator import file_sha256, load_evaluator  # noqa: E402
from tlcm_toy.runs import (bench_parser, check_train_seeds, checkpoint, student_pipe, train_run,  # noqa: E402
                           wall_seconds, write_results)

STEPS = 4
MLCD, LCD, LPIPS, MPS = "① stage 1 (MLCD)", "② ① + stage 2 (LCD, p = 3)", "③ ② with latent LPIPS", "④ ② + MPS"
DMD, GAN, DM_ONLY = "⑤ ④ + DMD", "⑥ ④ + DMD + GAN", "②+DM ② + DMD (no MPS)"
P_ROWS = {p: f"Table 3: p = {p}" for p in (1, 2, 4)}
PARENTS = {LCD: MLCD, LPIPS: LCD, MPS: LCD, DMD: MPS, GAN: DMD, DM_ONLY: LCD, **{r: LCD for r in P_ROWS.values()}}
SHOWN = ("fd", "fd_teacher25", "kid", "acc_all")                      # the paired-difference columns


def seed_runs(work: Path, seed: int, s1: int, s2: int, s3: int, s4: int, table3: bool) -> dict[str, Path]:
    """Train (or reuse) one training seed's branches; returns each row's final checkpoint."""
    base = [f"mlcd.steps={s1}", f"lcd.steps={s2}", f"output.checkpoint_every={s1}", f"train.seed={seed}"]
    tlcm = train_run(work / f"tlcm-seed{seed}", base)                  # bench/toy_table1.py's run
    end1, end2 = checkpoint(tlcm, s1), checkpoint(tlcm, s1 + s2)
    rows = {MLCD: end1, LCD: end2}
    if (WEIGHTS / "lpips.safetensors").is_file():
        rows[LPIPS] = checkpoint(train_run(work / f"lpips-seed{seed}", [*base, "distill.distance=latent_lpips"]),
                                 s1 + s2)
    mps = train_run(work / f"mps-seed{seed}", [*base, f"mps.steps={s3}"], resume=end2)
    rows[MPS] = checkpoint(mps, s1 + s2 + s3)
    for label, name, gan in ((DMD, "mps-dmd", "0.0"), (GAN, "mps-dmd-gan", "0.1")):
        run = train_run(work / f"{name}-seed{seed}", [*base, f"mps.steps={s3}", f"dm.steps={s4}",
                                                      f"dm.gan_weight={gan}"], resume=rows[MPS])
        rows[label] = checkpoint(run, s1 + s2 + s3 + s4)
    dm_only = train_run(work / f"dmd-rollout-seed{seed}",                # bench/toy_fake_data.py's run
                        [*base, f"dm.steps={s4}", "dm.gan_weight=0.0", "mps.weight=0.0", "dm.fake_data=rollout"],
                        resume=end2)
    rows[DM_ONLY] = checkpoint(dm_only, s1 + s2 + s4)
    for p, label in P_ROWS.items() if table3 else ():
        rows[label] = checkpoint(train_run(work / f"p{p}-seed{seed}", [*base, f"lcd.teacher_steps={p}"], resume=end1),
                                 s1 + s2)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser(__doc__.splitlines()[0], "toy_ablation", train_seeds=True, noise_seeds=[0, 1])
    parser.add_argument("--mlcd-steps", type=int, default=160, help="as bench/toy_table1.py")
    parser.add_argument("--lcd-steps", type=int, default=80, help="as bench/toy_table1.py")
    parser.add_argument("--mps-steps", type=int, default=100)
    parser.add_argument("--dm-steps", type=int, default=100, help="as bench/toy_fake_data.py")
    parser.add_argument("--table3", action="store_true", help="also stage 2 with p = 1, 2, 4 teacher steps")
    args = parser.parse_args(argv)
    if args.render:
        return write(json.loads(args.out.with_suffix(".json").read_text()), args.out)
    check_train_seeds(parser, args)
    torch.set_num_threads(args.threads)
    steps = dict(mlcd=args.mlcd_steps, lcd=args.lcd_steps, mps=args.mps_steps, dm=args.dm_steps)
    runs = {seed: seed_runs(args.work, seed, *steps.values(), args.table3)            # all training first
            for seed in args.train_seeds}
    teacher, evaluator = load_teacher(), load_evaluator()
    reference = Sampler("teacher DDIM-25 w=3", teacher, 25, 3.0)
    alpha = toy_config(args.work / "tlcm").lora.alpha
    per_run = []
    for rows in runs.values():
        samplers = [Sampler(label, student_pipe(path, alpha), STEPS, scheduler="tlcm") for label, path in rows.items()]
        scored = mean_over_seeds([score_samplers(samplers, reference, evaluator, args.n, seed)[0] for seed in args.seeds])
        per_run.append({label: scored[label] for label in rows})        # the teacher reference is not a row
    config = toy_config(args.work / "tlcm")
    record = dict(command="python bench/toy_ablation.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                  steps=steps, n=args.n, seeds=args.seeds, train_seeds=args.train_seeds, threads=args.threads,
                  train_seconds={f"{path.parents[1].name}": round(wall_seconds(path.parents[1]))
                                 for rows in runs.values() for path in rows.values()},
                  summary=summarise(per_run), per_run=per_run,
                  paired={row: paired_difference(per_run, row, parent) for row, parent in PARENTS.items()
                          if row in per_run[0]},
                  fake_rank=config.dm.fake_rank, gan_loss=config.dm.gan_loss, gan_weight=0.1,
                  weights_sha256={p.name: file_sha256(p) for p in (WEIGHTS / "scorer.safetensors",
                                                                   WEIGHTS / "lpips.safetensors") if p.is_file()})
    write(record, args.out)


def short(label: str) -> str:
    """A row's mark: ①, ②+DM, p = 1."""
    return label.split(": ")[1] if label.startswith("Table 3") else label.split()[0]


def paired_table(paired: dict[str, dict[str, list]]) -> str:
    """Row − parent per column: mean ± sample std, [95% t-interval]; * where the interval excludes 0."""
    lines = ["| row − its parent | " + " | ".join(SHOWN) + " |", "|" + "---|" * (len(SHOWN) + 1)]
    for row, columns in paired.items():
        cells = []
        for c in SHOWN:
            mean, sd, half = columns[c]
            star = "*" if half is not None and abs(mean) > half else ""
            cells.append(f"{mean:+.3g}{star}" if sd is None else
                         f"{mean:+.3g}{star} ± {sd:.2g} [{mean - half:+.3g}, {mean + half:+.3g}]")
        lines.append(f"| {short(row)} − {short(PARENTS[row])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


READING = """## Reading it

- Stage 2 (LCD) lowers FD to the data 80.2 → 51.3 (paired −28.9, interval [−52.5, −5.3]) and KID by 364,
  both beyond the spread; FD to the teacher does not move (+0.6). At 2–3 steps its effect is far larger
  (bench/results/toy_table1.md): stage 1 alone trains 4 segments.
- Latent LPIPS in both stages (③): FD 51.3 → 49.6, FD to the teacher +0.3, accuracy +0.006, all well
  inside their intervals. On this teacher the toy latent LPIPS neither helps nor hurts measurably.
- MPS (④, toy scorer, 100 steps) is the largest change: FD to the data 51.3 → 13.7 (paired −37.6,
  [−66, −9.3]), KID −322, joint accuracy 0.80 → 0.93 (+0.12, [+0.04, +0.21]), all beyond the spread,
  while FD to the teacher's own samples rises 10.4 → 30.3 (+20, [+15, +25]). The student leaves its
  teacher behind: its FD (13.7) is below the teacher's DDIM-25 + CFG (47.3). The toy scorer was trained to rank
  clean, matching toy images above degraded or mismatched ones (tlcm_toy/scorer.py), so its reward points at the data; the
  evaluator that measures FD is a separate network (docs/eval.md §5), but the two learnt from the same
  kind of images, so part of this gain may be the scorer's and the evaluator's shared view of the toy world.
- DMD after MPS (⑤): accuracy +0.025 ([+0.022, +0.028]); FD −2.8 and FD to the teacher +4.8, both inside
  their intervals. DMD straight after stage 2 (②+DM): FD −5.4, accuracy +0.06, inside their intervals.
- The GAN term on top of DMD (⑥) changes nothing measurable at weight 0.1 and 100 steps.
- So on this teacher the paper's order of stages holds in direction for every term: stage 2 and MPS beyond
  the spread, DMD by a small accuracy gain, latent LPIPS and the GAN term within the noise. On the previous
  teacher (position at chance, FD 82 at DDIM-25) MPS and DMD had made FD worse; a teacher that follows its
  prompts changes which terms pay off, which is a reason not to carry toy conclusions to SDXL unmeasured.
- Position is followed in every sample of every row (acc_position 1.00).
- Table 3 (stage 2 with p teacher steps, each branched from the same end of stage 1): FD 55.3 / 52.1 /
  51.3 / 51.1 for p = 1 / 2 / 3 / 4, the paper's order (its FID 26.19 / 25.73 / 25.44 / 25.18), but every
  paired difference from p = 3 is inside its interval (p = 1: +4.0 [−2.6, +10.6]; p = 2: +0.8 [−0.4, +1.9];
  p = 4: −0.3 [−1.0, +0.5]), and accuracy does not move. On the toy, p mostly sets the cost of a stage-2 pair
  (p CFG teacher steps, after the student's rollout); the default stays the paper's p = 3.
- Stage lengths here (100 MPS, 100 DM steps at the toy's learning rates) are the toy's.
"""


def write(record: dict, out: Path) -> None:
    """Render ``record`` as markdown beside its JSON (``--render`` redoes only this, from the JSON)."""
    steps, runs = record["steps"], record["train_seeds"]
    text = (f"# Toy ablation: Table 2 of the paper in toy form (Table 3 with --table3)\n\n`{record['command']}`\n\n"
            f"Each of the training seeds {runs}: the TLCM run of bench/toy_table1.py ({steps['mlcd']} MLCD + "
            f"{steps['lcd']} LCD steps) and its branches ({steps['mps']} MPS steps, {steps['dm']} DM steps; DMD "
            f"fake-score LoRA rank {record['fake_rank']}; GAN weight {record['gan_weight']}, {record['gan_loss']} "
            f"loss); tlcm_toy/toy.yaml otherwise. Every student at {STEPS} TLCM steps, "
            f"N = {record['n']} prompts, noise seeds {record['seeds']}; each run is the mean over the noise seeds, "
            f"± the sample standard deviation (ddof = 1) over the {len(runs)} training runs. Training wall time per "
            f"run folder (s, {record['threads']} threads; Table 1's and the fake-data bench's runs are reused): "
            f"{record['train_seconds']}. Weights: {record['weights_sha256']}.\n\n"
            + markdown_table(record["summary"])
            + f"\nWhat each term changes: the paired difference from its parent row within each training run, "
              f"mean ± sample std over the {len(runs)} runs and its 95% t-interval (df {len(runs) - 1}); * marks "
              f"an interval that excludes 0.\n\n" + paired_table(record["paired"]) + "\n" + READING)
    write_results(record, text, out)


if __name__ == "__main__":
    main()
