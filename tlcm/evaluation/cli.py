"""``tlcm eval``: sample the MSCOCO-2017 5K prompts with one sampler setting and score the images.

Writes into the ``--out`` folder ``images/NNNNN.png`` (resumable: a rerun makes only the missing images),
``eval.json`` (every setting, hash and number) and ``table1.md`` (the run as a row of the paper's Table 1,
beside the paper's rows). Nothing is downloaded: every model and metric weight is a local path.
"""
from __future__ import annotations

import argparse

from .fid import BUILT_IN_FEATURES
from .inception import WEIGHTS_HINT
from .samplers import SPEC_HELP


def _parse_lora(text: str) -> tuple[str, float]:
    from ..generate_cli import parse_lora
    return parse_lora(text)


def _parse_shard(text: str) -> tuple[int, int]:
    k, sep, n = text.partition("/")
    if not sep or not k.strip().isdigit() or not n.strip().isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected K/N, e.g. 0/4")
    return int(k), int(n)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("eval", help="MSCOCO-2017 5K evaluation: generate, then score CS, AS, IR and FID",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="SDXL diffusers folder or single-file .safetensors checkpoint, or a FLUX.1 diffusers folder")
    p.add_argument("--config", help="diffusers folder whose configs describe a single-file checkpoint")
    p.add_argument("--lora", action="append", type=_parse_lora, default=[], metavar="PATH[:STRENGTH]",
                   help="LoRA (official TLCM PEFT folder, diffusers or kohya; an LCM-LoRA for lcm:N); repeatable")
    p.add_argument("--lora-alpha", type=float, help="override the LoRA alpha")
    p.add_argument("--sampler", required=True, help=SPEC_HELP)
    p.add_argument("--flux-guidance", type=float,
                   help="tlcm:N on a FLUX model: the guidance embedding (default 7, the official TLCM-FLUX value)")
    p.add_argument("--limit", type=int, metavar="K", help="only the first K prompts (default: all 5,000)")
    p.add_argument("--seed", type=int, default=0, help="base seed: prompt i uses seed + i (default 0)")
    p.add_argument("--width", type=int, help="default: the model's native width (SDXL: 1024)")
    p.add_argument("--height", type=int, help="default: the model's native height")
    p.add_argument("--device", help="cuda / mps / cpu (default: best available)")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], help="default: bf16/fp16 on GPU, fp32 on CPU")
    p.add_argument("--clip-model", metavar="DIR",
                   help="CLIP score: a CLIP folder, transformers layout (e.g. laion/CLIP-ViT-g-14-laion2B-s12B-b42K) "
                        "or open_clip's (open_clip_config.json + open_clip_model.safetensors, e.g. "
                        "laion/CLIP-ViT-g-14-laion2B-s34B-b88K)")
    p.add_argument("--clip-pretrained", default="", metavar="TAG",
                   help="the pretrained tag of those weights, recorded with the score (e.g. laion2b_s12b_b42k)")
    p.add_argument("--aesthetic-clip", metavar="DIR",
                   help="AS: the OpenAI CLIP ViT-L/14 as a transformers folder (openai/clip-vit-large-patch14)")
    p.add_argument("--aesthetic-head", metavar="FILE",
                   help="AS: the LAION improved aesthetic predictor head (sac+logos+ava1-l14-linearMSE.pth or a "
                        ".safetensors copy)")
    p.add_argument("--image-reward", metavar="FILE",
                   help="IR: ImageReward v1.0's ImageReward.pt (THUDM/ImageReward) or a .safetensors copy")
    p.add_argument("--image-reward-tokenizer", metavar="DIR",
                   help="IR: the bert-base-uncased tokenizer folder (vocab.txt) ImageReward reads prompts with")
    p.add_argument("--fid-reference", metavar="DIR", help="FID against this folder of reference images (COCO val2017)")
    p.add_argument("--fid-teacher", metavar="DIR",
                   help="FID-to-teacher against another `tlcm eval` output folder (same --limit and --seed)")
    p.add_argument("--fid-features", metavar="MODULE:FACTORY", default=BUILT_IN_FEATURES,
                   help="FID feature extractor plugin: FACTORY(weights, device) returns an object with .name and "
                        "__call__(list of PIL images) -> (n, d) array. Default: the FID convention, the 2048-d "
                        "pool features of pytorch-fid's TF-Inception, built in")
    p.add_argument("--fid-weights", metavar="FILE",
                   help=f"weight file handed to the FID feature extractor; for the default, {WEIGHTS_HINT}")
    p.add_argument("--shard", type=_parse_shard, metavar="K/N",
                   help="make only the images i with i %% N == K and score nothing (one run per GPU, e.g. "
                        "CUDA_VISIBLE_DEVICES=K); a final run without --shard then scores them all. Under "
                        "`accelerate launch` the processes shard by themselves")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True, help="output folder (rerun with the same settings to resume)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from .evaluate import EvalConfig, run_evaluation
    from .report import table_row
    config = EvalConfig(
        model=args.model, model_config=args.config, loras=args.lora, lora_alpha=args.lora_alpha,
        flux_guidance=args.flux_guidance,
        sampler=args.sampler, out=args.out, limit=args.limit, seed=args.seed, width=args.width, height=args.height,
        device=args.device, dtype=args.dtype, clip_model=args.clip_model, clip_pretrained=args.clip_pretrained,
        aesthetic_clip=args.aesthetic_clip, aesthetic_head=args.aesthetic_head,
        image_reward=args.image_reward, image_reward_tokenizer=args.image_reward_tokenizer,
        fid_reference=args.fid_reference, fid_teacher=args.fid_teacher, fid_features=args.fid_features,
        fid_weights=args.fid_weights, progress=not args.no_progress, shard=args.shard)
    result = run_evaluation(config)
    if result is None:
        print(f"shard done: its images are in {args.out}/images; run once more without --shard to score")
        return 0
    print(table_row(result))
    for entry in result["metrics"].values():
        if entry["value"] is None:
            print(f"{entry['label']}: not computed: {entry['not_computed']}")
    print(f"results in {args.out}: eval.json, table1.md")
    return 0
