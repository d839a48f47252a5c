"""Which data should the DMD fake score learn from? The paper's multi-step rollout ẑ0 against DMD2's
one-step x̂0 (``dm.fake_data``), measured on the toy over several training seeds.

Each training seed's TLCM run of ``bench/toy_table1.py`` (same ``--work``, same stage lengths) is branched
at the end of stage 2 into stage 4 with distribution matching alone (no preference, no GAN term), once per
``fake_data`` choice; all students at 4 TLCM steps. The design is paired: both branches of a seed share the
same start, prompts and noise, so the per-seed difference is reported beside the rows.

    python bench/toy_fake_data.py --out bench/results/toy_fake_data     # the committed results
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
from tlcm_toy.evaluate import (COLUMNS, Sampler, markdown_table, mean_over_seeds, paired_difference,  # noqa: E402
                               score_samplers, summarise)
from tlcm_toy.evaluator import load_evaluator  # noqa: E402
from tlcm_toy.runs import (bench_parser, check_train_seeds, checkpoint, student_pipe, train_run,  # noqa: E402
                           wall_seconds, write_results)

STEPS = 4
START = "② end of stage 2 (the branch point)"
CHOICES = {"rollout": "+ DMD, fake score on the rollout ẑ0 (paper)",
           "one_step": "+ DMD, fake score on the one-step x̂0 (DMD2)"}


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser(__doc__.splitlines()[0], "toy_fake_data", train_seeds=True, noise_seeds=[0, 1])
    parser.add_argument("--mlcd-steps", type=int, default=160, help="as bench/toy_table1.py")
    parser.add_argument("--lcd-steps", type=int, default=80, help="as bench/toy_table1.py")
    parser.add_argument("--dm-steps", type=int, default=100)
    args = parser.parse_args(argv)
    if args.render:
        return write(json.loads(args.out.with_suffix(".json").read_text()), args.out)
    check_train_seeds(parser, args)
    torch.set_num_threads(args.threads)
    s1, s2, s4 = args.mlcd_steps, args.lcd_steps, args.dm_steps
    teacher, evaluator = load_teacher(), load_evaluator()
    reference = Sampler("teacher DDIM-25 w=3", teacher, 25, 3.0)
    per_run, train_seconds = [], {}
    for train_seed in args.train_seeds:
        base = [f"mlcd.steps={s1}", f"lcd.steps={s2}", f"output.checkpoint_every={s1}", f"train.seed={train_seed}"]
        tlcm = train_run(args.work / f"tlcm-seed{train_seed}", base)
        alpha = toy_config(tlcm).lora.alpha
        students = {START: checkpoint(tlcm, s1 + s2)}
        for choice, label in CHOICES.items():
            run = train_run(args.work / f"dmd-{choice}-seed{train_seed}",
                            [*base, f"dm.steps={s4}", "dm.gan_weight=0.0", "mps.weight=0.0", f"dm.fake_data={choice}"],
                            resume=checkpoint(tlcm, s1 + s2))
            students[label] = checkpoint(run, s1 + s2 + s4)
            train_seconds[f"{choice}-seed{train_seed}"] = round(wall_seconds(run))
        samplers = [Sampler(label, student_pipe(path, alpha), STEPS, scheduler="tlcm") for label, path in students.items()]
        rows = mean_over_seeds([score_samplers(samplers, reference, evaluator, args.n, seed)[0] for seed in args.seeds])
        per_run.append({label: rows[label] for label in students})         # the teacher reference is not a row
    record = dict(command="python bench/toy_fake_data.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                  steps=dict(mlcd=s1, lcd=s2, dm=s4), n=args.n, seeds=args.seeds, train_seeds=args.train_seeds,
                  threads=args.threads, train_seconds=train_seconds, summary=summarise(per_run), per_run=per_run,
                  paired=paired_difference(per_run, CHOICES["one_step"], CHOICES["rollout"]))
    write(record, args.out)


READING = """## Reading it

- The paper's choice is the better one here, beyond the spread: one_step − rollout (same start, prompts and
  noise per seed) is FD +6.3 ± 0.7 (95% t-interval, df 2: [+4.5, +8.1]; positive for every seed), KID
  +65 [+33, +98], joint accuracy −0.014 [−0.019, −0.009] (texture −0.013); FD to the teacher +0.7
  [−2.0, +3.3], no difference. So `dm.fake_data` defaults to rollout, the paper's "s_fake is finetuned on
  synthetic data ẑ0". A likely reason, not tested here: the rollout ẑ0 is what the student's multi-step
  sampler outputs, so the fake score learns the distribution that is sampled; the one-step x̂0 is a
  single step's estimate, which the sampler never returns.
- Against the branch point, DMD alone (100 steps, no MPS) moves nothing beyond the spread: rollout FD −5.4
  [−54, +44], accuracy +0.06 [−0.09, +0.21], FD to the teacher +3.7 [−4.6, +12]; one-step FD +0.9
  [−49, +51]. The seeds disagree in direction (seed 0: FD −27; seed 1: +11), so this table settles the
  choice of fake data from the same start, not whether DMD alone helps; Table 2
  (bench/results/toy_ablation.md) finds DMD's measurable gain after MPS, in accuracy.
"""


def write(record: dict, out: Path) -> None:
    """Render ``record`` as markdown beside its JSON (``--render`` redoes only this, from the JSON)."""
    steps, runs = record["steps"], record["train_seeds"]
    paired = " | ".join(f"{m:.3g} ± {s:.2g}" if s is not None else f"{m:.3g}" for m, s, *_ in record["paired"].values())
    text = (f"# Toy: the DMD fake score's data, rollout ẑ0 vs one-step x̂0\n\n`{record['command']}`\n\n"
            f"Each training seed {runs}: the TLCM run of bench/toy_table1.py ({steps['mlcd']} MLCD + {steps['lcd']} "
            f"LCD steps) branched into {steps['dm']} stage-4 steps of distribution matching alone (dm.gan_weight 0, "
            f"mps.weight 0), once per `dm.fake_data`; tlcm_toy/toy.yaml otherwise. Students at {STEPS} TLCM steps, "
            f"N = {record['n']} prompts, noise seeds {record['seeds']}; each run is the mean over the noise seeds, "
            f"± the sample standard deviation (ddof = 1) over the {len(runs)} training runs. Training wall time per "
            f"branch (s, {record['threads']} threads): {record['train_seconds']}.\n\n"
            + markdown_table({k: v for k, v in record["summary"].items() if k == START or k in CHOICES.values()})
            + "\nPaired difference, one_step − rollout (same seed, same start), mean ± sample std over seeds:\n\n"
            + "| | " + " | ".join(COLUMNS) + " |\n|" + "---|" * (len(COLUMNS) + 1) + "\n"
            + f"| one_step − rollout | {paired} |\n\n" + READING)
    write_results(record, text, out)


if __name__ == "__main__":
    main()
