"""`tlcm eval` end to end on the tiny SDXL kit: prompts, samplers, resume, CLIP score, aesthetic score,
ImageReward and FID.

Every metric is recomputed here from the written PNGs by an independent route: the CLIP score through
``CLIPModel.forward``'s normalised embeddings with the preprocessing written out in numpy, the FID with
``scipy.linalg.sqrtm`` of ``S1 @ S2`` (the pytorch-fid formula) on features computed here.
"""
from __future__ import annotations

import hashlib
import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from image_reward_reference import VOCABULARY, write_tokenizer
from tlcm.cli import main
from tlcm.evaluation.fid import frechet_distance
from tlcm.evaluation.prompts import PROMPT_FILE, derive_coco_prompts, load_coco_prompts, prompts_sha256

COCO_5K_SHA256 = "2209843982e718a837749ed72cecfaee94e728bc5d057230f483a1063cd31fb9"
CLIP_IMAGE_SIZE = 32
FEATURE_DIM = 6

# The FID stand-in: a fixed projection of 8x8 thumbnails, read from a safetensors file (--fid-weights).
PLUGIN_SOURCE = '''
import numpy as np
from safetensors.numpy import load_file

class Thumbnails:
    def __init__(self, weights):
        self.projection = load_file(weights)["projection"]
        self.name = "test thumbnails 8x8 -> %d" % self.projection.shape[1]

    def __call__(self, images):
        rows = [np.asarray(im.convert("RGB").resize((8, 8), 2), dtype=np.float64).ravel() / 255.0 for im in images]
        return np.stack(rows) @ self.projection

def factory(weights, device):
    return Thumbnails(weights)
'''


def thumbnail_features(paths, projection):
    rows = []
    for path in paths:
        with Image.open(path) as image:
            rows.append(np.asarray(image.convert("RGB").resize((8, 8), Image.BILINEAR), np.float64).ravel() / 255.0)
    return np.stack(rows) @ projection


def written_out_fid(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import linalg
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


# --- prompts -------------------------------------------------------------------------------------------

def test_shipped_prompt_file_is_the_coco_5k_list():
    text = PROMPT_FILE.read_text(encoding="utf-8")
    assert text.endswith("\n") and not text.endswith("\n\n")
    lines = text[:-1].split("\n")
    assert len(lines) == 5000
    assert hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest() == COCO_5K_SHA256
    assert lines[0] == "A woman stands in the dining area at the table."   # image 139, annotation 370509
    assert all(line == line.strip() and line for line in lines)
    assert load_coco_prompts() == lines
    notice = PROMPT_FILE.with_name("coco2017_val_5k.NOTICE.md").read_text(encoding="utf-8")
    assert "Creative Commons Attribution 4.0" in notice and "COCO Consortium" in notice


def test_a_changed_prompt_file_is_refused(tmp_path):
    lines = PROMPT_FILE.read_text(encoding="utf-8").split("\n")
    lines[3] = lines[3] + " "
    bad = tmp_path / "prompts.txt"
    bad.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(ValueError, match="not the MSCOCO-2017 5K list"):
        load_coco_prompts(bad)


def test_prompt_rule_smallest_annotation_id_per_image_in_image_order(tmp_path):
    data = {"images": [{"id": 30}, {"id": 4}, {"id": 12}],
            "annotations": [{"image_id": 30, "id": 9, "caption": " late\n"}, {"image_id": 4, "id": 50, "caption": "b"},
                            {"image_id": 4, "id": 7, "caption": "  first of four "},
                            {"image_id": 12, "id": 8, "caption": "twelve"}, {"image_id": 30, "id": 2, "caption": "thirty"}]}
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    assert derive_coco_prompts(path) == ["first of four", "twelve", "thirty"]
    assert prompts_sha256(["a", "b"]) == hashlib.sha256(b"a\nb").hexdigest()


# --- Fréchet distance ----------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")
def test_frechet_distance_matches_the_written_out_formula():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(60, 5))
    b = rng.normal(size=(40, 5)) @ rng.normal(size=(5, 5)) + 0.7
    mine = frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert mine == pytest.approx(written_out_fid(a, b), rel=1e-9)
    assert frechet_distance(a.mean(0), np.cov(a, rowvar=False), a.mean(0), np.cov(a, rowvar=False)) == pytest.approx(0, abs=1e-9)


# --- samplers ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, evals", [("tlcm:2", 2), ("ddim:3:4", 6), ("ddim:2:1", 2), ("lcm:2", 2)])
def test_samplers_count_unet_evaluations(tiny_pipe, one_thread, tmp_path, spec, evals):
    from tlcm.evaluation.generation import generate_set
    from tlcm.evaluation.samplers import parse_sampler
    scheduler = tiny_pipe.scheduler
    try:
        records, made = generate_set(tiny_pipe, ["a red cube"], parse_sampler(spec), out_dir=tmp_path, base_seed=5,
                                     width=64, height=64, run={"sampler": spec}, progress=False)
        if spec.startswith("ddim"):      # trailing spacing, round(1000 - 1000 k / N) - 1: pure noise first (docs/eval.md §6)
            assert tiny_pipe.scheduler.timesteps.tolist() == {"ddim:3:4": [999, 666, 332], "ddim:2:1": [999, 499]}[spec]
    finally:
        tiny_pipe.scheduler = scheduler
    assert made == [0] and records[0].unet_evals == evals and records[0].seed == 5
    assert Image.open(tmp_path / "00000.png").size == (64, 64)


@pytest.mark.parametrize("spec, scheduler", [("diffusers:EulerAncestralDiscreteScheduler:3:2.5",
                                               "EulerAncestralDiscreteScheduler"),
                                              ("diffusers:unipcmultistepscheduler:2:1", "UniPCMultistepScheduler"),
                                              ("diffusers:TCDScheduler:2:1", "TCDScheduler")])
def test_a_diffusers_scheduler_by_name_samples_as_the_pipeline_does(tiny_pipe, one_thread, tmp_path, spec, scheduler):
    """The image equals the diffusers pipeline called by hand with that scheduler class on the model's config,
    the seed on a CPU generator and CFG as given; UNet evaluations are steps x 2 under CFG."""
    import diffusers
    from tlcm.evaluation.generation import generate_set
    from tlcm.evaluation.samplers import parse_sampler
    own = tiny_pipe.scheduler
    steps, cfg = int(spec.split(":")[2]), float(spec.split(":")[3])
    try:
        records, _ = generate_set(tiny_pipe, ["a red cube"], parse_sampler(spec), out_dir=tmp_path, base_seed=5,
                                  width=64, height=64, run={"sampler": spec}, progress=False)
        assert type(tiny_pipe.scheduler).__name__ == scheduler
        tiny_pipe.scheduler = getattr(diffusers, scheduler).from_config(own.config)
        by_hand = tiny_pipe(prompt="a red cube", num_inference_steps=steps, guidance_scale=cfg if cfg > 1 else 0.0,
                            generator=torch.Generator("cpu").manual_seed(5), width=64, height=64,
                            output_type="np").images[0]
    finally:
        tiny_pipe.scheduler = own
    assert records[0].unet_evals == steps * (2 if cfg > 1 else 1)
    made = np.asarray(Image.open(tmp_path / "00000.png"), dtype=np.float64)
    assert np.abs(made - np.round(by_hand * 255)).max() <= 1


def test_a_diffusers_scheduler_off_the_models_noise_schedule_is_refused(tiny_pipe):
    from tlcm.evaluation.samplers import parse_sampler, prepare_pipeline
    own = tiny_pipe.scheduler
    with pytest.raises(ValueError, match="FlowMatchEulerDiscreteScheduler does not share the noise schedule"):
        prepare_pipeline(tiny_pipe, parse_sampler("diffusers:FlowMatchEulerDiscreteScheduler:4:1"))
    assert tiny_pipe.scheduler is own


@pytest.mark.parametrize("bad", ["tlcm", "tlcm:0", "ddim:25", "lcm:4:2", "euler:4", "ddim:4:0.5", "tlcm:x",
                                 "diffusers:EulerDiscreteScheduler:4", "diffusers:NoSuchScheduler:4:1",
                                 "diffusers:FlaxDDIMScheduler:4:1", "diffusers:EulerDiscreteScheduler:0:1",
                                 "diffusers:EulerDiscreteScheduler:4:0.5"])
def test_bad_sampler_specs_are_refused(bad):
    from tlcm.evaluation.samplers import parse_sampler
    with pytest.raises(ValueError):
        parse_sampler(bad)


# --- end to end ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    from tlcm.testing.build import build_tiny_sdxl
    return build_tiny_sdxl(tmp_path_factory.mktemp("eval_kit"))


@pytest.fixture(scope="module")
def metric_weights(tmp_path_factory, kit):
    """A tiny CLIP folder (real CLIP tokenizer, random narrow towers), the FID plugin and its weights,
    and a folder of reference images."""
    from safetensors.numpy import save_file
    from transformers import CLIPConfig, CLIPModel
    root = tmp_path_factory.mktemp("eval_metrics")
    torch.manual_seed(7)
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=CLIP_IMAGE_SIZE, patch_size=8), projection_dim=8)
    clip_dir = root / "tiny-clip"
    CLIPModel(config).eval().save_pretrained(clip_dir, safe_serialization=True)
    for f in (kit.diffusers / "tokenizer").iterdir():
        (clip_dir / f.name).write_bytes(f.read_bytes())
    plugin_dir = root / "plugin"
    plugin_dir.mkdir()
    (plugin_dir / "eval_test_features.py").write_text(PLUGIN_SOURCE, encoding="utf-8")
    projection = np.random.default_rng(3).normal(size=(8 * 8 * 3, FEATURE_DIM))
    save_file({"projection": projection}, str(root / "features.safetensors"))
    ref = root / "reference"
    ref.mkdir()
    rng = np.random.default_rng(11)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(ref / f"ref{i}.jpg")
    # the aesthetic head in the released layout and file format (a torch.save'd dict of tensors), fed by
    # the tiny CLIP's 8-d projection; biases and weights away from zero so a dropped layer or bias shows
    head = {}
    widths = (8, 1024, 128, 64, 16, 1)
    for i, (n_in, n_out) in zip((0, 2, 4, 6, 7), zip(widths, widths[1:])):
        head[f"layers.{i}.weight"] = torch.randn(n_out, n_in) / n_in ** 0.5
        head[f"layers.{i}.bias"] = 0.5 + 0.1 * torch.randn(n_out)
    torch.save(head, root / "aesthetic-head.pth")
    torch.save(tiny_reward_state(), root / "ImageReward.pt")       # the released format: a torch.save'd dict
    return {"clip": clip_dir, "plugin": plugin_dir, "features": root / "features.safetensors",
            "projection": projection, "reference": ref, "aesthetic_head": root / "aesthetic-head.pth",
            "head": {k: v.double().numpy() for k, v in head.items()},
            "image_reward": root / "ImageReward.pt", "reward_tokenizer": write_tokenizer(root / "bert-tokenizer")}


def tiny_reward_state() -> dict[str, torch.Tensor]:
    """ImageReward's layout at test size (a 64-wide ViT on 32² images, one block; a 64-wide text encoder
    with one layer; the five-layer head), with random weights: only the keys and shapes matter here, the
    network itself is checked against the ImageReward package in tests/test_image_reward.py."""
    g = torch.Generator().manual_seed(5)
    shapes = {"blip.visual_encoder.cls_token": (1, 1, 64), "blip.visual_encoder.pos_embed": (1, 5, 64),
              "blip.visual_encoder.patch_embed.proj.weight": (64, 3, 16, 16),
              "blip.visual_encoder.patch_embed.proj.bias": (64,),
              "blip.text_encoder.embeddings.word_embeddings.weight": (len(VOCABULARY) + 2, 64),
              "blip.text_encoder.embeddings.position_embeddings.weight": (40, 64),
              "blip.text_proj.weight": (8, 64)}                         # a BLIP part the reward never runs
    linear = {"blip.visual_encoder.blocks.0.attn.qkv": (192, 64), "blip.visual_encoder.blocks.0.attn.proj": (64, 64),
              "blip.visual_encoder.blocks.0.mlp.fc1": (128, 64), "blip.visual_encoder.blocks.0.mlp.fc2": (64, 128),
              "blip.text_encoder.encoder.layer.0.intermediate.dense": (128, 64),
              "blip.text_encoder.encoder.layer.0.output.dense": (64, 128)}
    for part in ("attention", "crossattention"):
        for name in ("self.query", "self.key", "self.value", "output.dense"):
            linear[f"blip.text_encoder.encoder.layer.0.{part}.{name}"] = (64, 64)
    widths = (64, 1024, 128, 64, 16, 1)
    for i, (n_in, n_out) in zip((0, 2, 4, 6, 7), zip(widths, widths[1:])):
        linear[f"mlp.layers.{i}"] = (n_out, n_in)
    norms = ["blip.visual_encoder.blocks.0.norm1", "blip.visual_encoder.blocks.0.norm2", "blip.visual_encoder.norm",
             "blip.text_encoder.embeddings.LayerNorm", "blip.text_encoder.encoder.layer.0.output.LayerNorm",
             "blip.text_encoder.encoder.layer.0.attention.output.LayerNorm",
             "blip.text_encoder.encoder.layer.0.crossattention.output.LayerNorm"]
    state = {key: torch.randn(shape, generator=g) * 0.5 for key, shape in shapes.items()}
    for name, (n_out, n_in) in linear.items():
        state[f"{name}.weight"] = torch.randn(n_out, n_in, generator=g) / n_in ** 0.5
        state[f"{name}.bias"] = 0.1 * torch.randn(n_out, generator=g)
    for name in norms:
        state[f"{name}.weight"] = 1 + 0.2 * torch.randn(64, generator=g)
        state[f"{name}.bias"] = 0.1 * torch.randn(64, generator=g)
    return state


def _eval(capsys, *args) -> tuple[int, str, str]:
    code = main(["eval", "--no-progress", "--device", "cpu", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def runs(tmp_path_factory, kit, metric_weights):
    """A teacher run (DDIM + CFG) and a TLCM run scored with CS, FID and FID-to-teacher, 3 prompts each."""
    root = tmp_path_factory.mktemp("eval_runs")
    sys.path.insert(0, str(metric_weights["plugin"]))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)        # tiny models only lose from intra-op threads on a shared CPU
        teacher, student = root / "teacher", root / "student"
        assert main(["eval", "--no-progress", "--device", "cpu", "--model", str(kit.diffusers), "--sampler",
                     "ddim:2:3", "--limit", "3", "--seed", "10", "--out", str(teacher)]) == 0
        student_args = ["eval", "--no-progress", "--device", "cpu", "--model", str(kit.diffusers), "--sampler",
                        "tlcm:2", "--limit", "3", "--seed", "10", "--out", str(student),
                        "--clip-model", str(metric_weights["clip"]), "--clip-pretrained", "tiny-test",
                        "--aesthetic-clip", str(metric_weights["clip"]),
                        "--aesthetic-head", str(metric_weights["aesthetic_head"]),
                        "--image-reward", str(metric_weights["image_reward"]),
                        "--image-reward-tokenizer", str(metric_weights["reward_tokenizer"]),
                        "--fid-reference", str(metric_weights["reference"]), "--fid-teacher", str(teacher),
                        "--fid-features", "eval_test_features:factory", "--fid-weights", str(metric_weights["features"])]
        assert main(student_args) == 0
    finally:
        sys.path.remove(str(metric_weights["plugin"]))
        torch.set_num_threads(threads)
    return {"teacher": teacher, "student": student, "student_args": student_args}


def test_end_to_end_result_files(runs, kit):
    result = json.loads((runs["student"] / "eval.json").read_text(encoding="utf-8"))
    assert result["sampler"]["spec"] == "tlcm:2" and result["sampler"]["steps"] == 2
    assert result["prompts"]["list_sha256"] == COCO_5K_SHA256 and result["prompts"]["count"] == 3
    assert result["prompts"]["selected_sha256"] == prompts_sha256(load_coco_prompts()[:3])
    assert result["seeds"]["base"] == 10 and result["seeds"]["last"] == 12
    unet = kit.diffusers / "unet" / "diffusion_pytorch_model.safetensors"
    assert result["model"]["sha256"]["unet/diffusion_pytorch_model.safetensors"] == \
        hashlib.sha256(unet.read_bytes()).hexdigest()
    assert result["timing"]["median_unet_evals_per_image"] == 2
    assert len(result["timing"]["seconds_per_image"]) == 3
    assert result["metrics"]["clip_score"]["variant"]["pretrained_tag"] == "tiny-test"
    assert all(entry["value"] is not None for entry in result["metrics"].values())     # every metric was asked for
    assert "not computed" not in (runs["student"] / "table1.md").read_text(encoding="utf-8")
    teacher_metrics = json.loads((runs["teacher"] / "eval.json").read_text(encoding="utf-8"))["metrics"]
    assert teacher_metrics["image_reward"]["not_computed"] == "no --image-reward / --image-reward-tokenizer given"
    teacher = json.loads((runs["teacher"] / "eval.json").read_text(encoding="utf-8"))
    assert teacher["timing"]["median_unet_evals_per_image"] == 4     # 2 steps x CFG
    for i, prompt in enumerate(load_coco_prompts()[:3]):
        with Image.open(runs["student"] / "images" / f"{i:05d}.png") as image:
            record = json.loads(image.text["tlcm_eval"])
        assert record["prompt"] == prompt and record["seed"] == 10 + i


def test_table_has_the_paper_rows_and_this_run(runs):
    table = (runs["student"] / "table1.md").read_text(encoding="utf-8")
    assert "| Method | N | Time | FID | CS | AS | IR |" in table
    for row in ("| DDIM (paper) | 25 | 3.29 | 23.29 | 33.97 | 5.87 | 0.82 |",
                "| LCM (paper) | 4 | 0.71 | 27.09 | 32.53 | 5.85 | 0.51 |",
                "| TLCM (paper) | 3 | 0.65 | 29.12 | 33.68 | 5.97 | 1.00 |",
                "| TLCM (paper) | 8 | 0.99 | 32.40 | 33.53 | 6.08 | 1.02 |"):
        assert row in table
    result = json.loads((runs["student"] / "eval.json").read_text(encoding="utf-8"))
    ours = [line for line in table.splitlines() if line.startswith("| TLCM (this run, tlcm:2) | 2 |")]
    assert len(ours) == 1
    metrics = result["metrics"]
    assert (f"| {metrics['fid']['value']:.2f} | {metrics['clip_score']['value']:.2f} | "
            f"{metrics['aesthetic_score']['value']:.2f} | {metrics['image_reward']['value']:.2f} |") in ours[0]


def test_image_reward_scores_each_saved_image_with_its_own_prompt(runs, metric_weights):
    """The harness's IR is the built-in scorer (checked against the ImageReward package in
    tests/test_image_reward.py) on image i and prompt i, in order, its weights hashed; a swapped pairing or
    a stale image changes the numbers."""
    from tlcm.evaluation.image_reward import ImageRewardScorer
    result = json.loads((runs["student"] / "eval.json").read_text(encoding="utf-8"))
    scorer = ImageRewardScorer.from_paths(metric_weights["image_reward"], metric_weights["reward_tokenizer"])
    prompts = load_coco_prompts()[:3]
    images = [Image.open(runs["student"] / "images" / f"{i:05d}.png") for i in range(3)]
    expected = [scorer.scores([image], [prompt])[0] for image, prompt in zip(images, prompts)]
    assert np.std(expected) > 1e-3 and scorer.scores(images[:1], prompts[1:2])[0] != pytest.approx(expected[0])
    reward = result["metrics"]["image_reward"]
    assert reward["per_image"] == pytest.approx(expected, abs=1e-5)
    assert reward["value"] == pytest.approx(np.mean(expected), abs=1e-5)
    assert result["weights_sha256"]["image_reward"] == {
        "ImageReward.pt": hashlib.sha256(metric_weights["image_reward"].read_bytes()).hexdigest()}


def test_clip_score_equals_an_independent_computation(runs, metric_weights):
    from transformers import CLIPModel, CLIPTokenizer
    result = json.loads((runs["student"] / "eval.json").read_text(encoding="utf-8"))
    model = CLIPModel.from_pretrained(metric_weights["clip"]).eval()
    tokenizer = CLIPTokenizer.from_pretrained(metric_weights["clip"])
    mean, std = np.array([0.48145466, 0.4578275, 0.40821073]), np.array([0.26862954, 0.26130258, 0.27577711])
    prompts = load_coco_prompts()[:3]
    expected = []
    for i, prompt in enumerate(prompts):
        with Image.open(runs["student"] / "images" / f"{i:05d}.png") as image:
            assert image.size == (64, 64)       # square: the resize is the whole transform, no crop
            small = image.convert("RGB").resize((CLIP_IMAGE_SIZE, CLIP_IMAGE_SIZE), Image.BICUBIC)
        pixels = ((np.asarray(small, np.float64) / 255.0 - mean) / std).transpose(2, 0, 1)[None]
        tokens = tokenizer([prompt], return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                        pixel_values=torch.tensor(pixels, dtype=torch.float32))
        expected.append(100.0 * float((out.image_embeds * out.text_embeds).sum()))
    assert result["metrics"]["clip_score"]["per_image"] == pytest.approx(expected, abs=1e-4)
    assert result["metrics"]["clip_score"]["value"] == pytest.approx(np.mean(expected), abs=1e-4)


def test_aesthetic_score_equals_an_independent_computation(runs, metric_weights):
    """CLIP image embedding (preprocessing written out), L2-normalised, then the five affine layers in
    float64: a missing normalisation, bias, layer or a ReLU between layers changes every score."""
    from transformers import CLIPModel
    result = json.loads((runs["student"] / "eval.json").read_text(encoding="utf-8"))
    model = CLIPModel.from_pretrained(metric_weights["clip"]).eval()
    mean, std = np.array([0.48145466, 0.4578275, 0.40821073]), np.array([0.26862954, 0.26130258, 0.27577711])
    head = metric_weights["head"]
    expected = []
    for i in range(3):
        with Image.open(runs["student"] / "images" / f"{i:05d}.png") as image:
            small = image.convert("RGB").resize((CLIP_IMAGE_SIZE, CLIP_IMAGE_SIZE), Image.BICUBIC)
        pixels = ((np.asarray(small, np.float64) / 255.0 - mean) / std).transpose(2, 0, 1)[None]
        with torch.no_grad():
            vision = model.vision_model(pixel_values=torch.tensor(pixels, dtype=torch.float32))
            embedding = model.visual_projection(vision.pooler_output)[0].double().numpy()
        x = embedding / np.sqrt((embedding ** 2).sum())
        for layer in (0, 2, 4, 6, 7):
            x = head[f"layers.{layer}.weight"] @ x + head[f"layers.{layer}.bias"]
        expected.append(float(x[0]))
    aesthetic = result["metrics"]["aesthetic_score"]
    assert aesthetic["per_image"] == pytest.approx(expected, abs=1e-4)
    assert aesthetic["value"] == pytest.approx(np.mean(expected), abs=1e-4)
    assert aesthetic["variant"]["head"] == "aesthetic-head.pth"
    assert result["weights_sha256"]["aesthetic_head"] == {
        "aesthetic-head.pth": hashlib.sha256(metric_weights["aesthetic_head"].read_bytes()).hexdigest()}


@pytest.mark.parametrize("flaw", ["keys", "width", "clip", "alone"])
def test_a_wrong_aesthetic_head_is_refused_before_any_image(tmp_path, kit, metric_weights, capsys, flaw):
    head = {k: torch.tensor(v, dtype=torch.float32) for k, v in metric_weights["head"].items()}
    if flaw == "keys":                                    # the v1 linear predictor's layout
        head = {"weight": torch.zeros(1, 8), "bias": torch.zeros(1)}
    if flaw == "width":
        head["layers.2.weight"] = torch.zeros(128, 1000)
    if flaw == "clip":                                    # a head for 768-d ViT-L/14 embeddings on an 8-d CLIP
        head["layers.0.weight"] = torch.zeros(1024, 768)
    path = tmp_path / "head.pth"
    torch.save(head, path)
    args = ["--model", kit.diffusers, "--sampler", "tlcm:2", "--limit", "2", "--out", tmp_path / "out",
            "--aesthetic-head", path]
    if flaw != "alone":
        args += ["--aesthetic-clip", metric_weights["clip"]]
    code, _, err = _eval(capsys, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert ("--aesthetic-clip" in err) if flaw == "alone" else (str(path) in err)
    assert ("768-d" in err) == (flaw == "clip")
    assert not (tmp_path / "out" / "images").exists()


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")   # 3 images: singular covariances
def test_fid_and_fid_to_teacher_equal_an_independent_computation(runs, metric_weights):
    result = json.loads((runs["student"] / "eval.json").read_text(encoding="utf-8"))
    projection = metric_weights["projection"]
    own = thumbnail_features([runs["student"] / "images" / f"{i:05d}.png" for i in range(3)], projection)
    ref = thumbnail_features(sorted(metric_weights["reference"].glob("*.jpg")), projection)
    teacher = thumbnail_features([runs["teacher"] / "images" / f"{i:05d}.png" for i in range(3)], projection)
    fid, to_teacher = result["metrics"]["fid"], result["metrics"]["fid_to_teacher"]
    assert fid["label"] == "FID" and to_teacher["label"] == "FID-to-teacher"
    assert fid["value"] == pytest.approx(written_out_fid(own, ref), rel=1e-6, abs=1e-6)
    assert to_teacher["value"] == pytest.approx(written_out_fid(own, teacher), rel=1e-6, abs=1e-6)
    assert fid["features"].startswith("test thumbnails")
    assert result["weights_sha256"]["fid_features"] == {
        "features.safetensors": hashlib.sha256(metric_weights["features"].read_bytes()).hexdigest()}


def test_resume_regenerates_only_the_missing_image(runs, metric_weights):
    images = runs["student"] / "images"
    before = json.loads((runs["student"] / "eval.json").read_text(encoding="utf-8"))
    pixels = np.asarray(Image.open(images / "00001.png"))
    stamps = {i: (images / f"{i:05d}.png").stat().st_mtime_ns for i in (0, 2)}
    (images / "00001.png").unlink()
    sys.path.insert(0, str(metric_weights["plugin"]))
    try:
        assert main(runs["student_args"]) == 0
    finally:
        sys.path.remove(str(metric_weights["plugin"]))
    after = json.loads((runs["student"] / "eval.json").read_text(encoding="utf-8"))
    assert after["images"]["generated_this_run"] == 1 and after["images"]["reused"] == 2
    assert {i: (images / f"{i:05d}.png").stat().st_mtime_ns for i in (0, 2)} == stamps
    assert np.array_equal(np.asarray(Image.open(images / "00001.png")), pixels)
    for key in ("clip_score", "aesthetic_score", "fid", "fid_to_teacher"):
        assert after["metrics"][key]["value"] == before["metrics"][key]["value"]


def _with_plugin(metric_weights, args: list[str]) -> int:
    sys.path.insert(0, str(metric_weights["plugin"]))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        return main(args)
    finally:
        sys.path.remove(str(metric_weights["plugin"]))
        torch.set_num_threads(threads)


def _out_arg(args: list[str], out: Path) -> list[str]:
    args = list(args)
    args[args.index("--out") + 1] = str(out)
    return args


def test_shards_then_a_scoring_run_equal_one_uninterrupted_run(runs, metric_weights, tmp_path, capsys):
    sharded = tmp_path / "sharded"
    args = _out_arg(runs["student_args"], sharded)
    assert _with_plugin(metric_weights, [*args, "--shard", "1/2"]) == 0
    assert "run once more without --shard" in capsys.readouterr().out
    assert sorted(p.name for p in (sharded / "images").iterdir()) == ["00001.png"]      # i % 2 == 1 only
    assert not (sharded / "eval.json").exists()
    assert _with_plugin(metric_weights, [*args, "--shard", "0/2"]) == 0
    assert sorted(p.name for p in (sharded / "images").iterdir()) == ["00000.png", "00001.png", "00002.png"]
    assert _with_plugin(metric_weights, args) == 0
    result = json.loads((sharded / "eval.json").read_text(encoding="utf-8"))
    whole = json.loads((runs["student"] / "eval.json").read_text(encoding="utf-8"))
    assert result["images"]["generated_this_run"] == 0
    for key in ("clip_score", "aesthetic_score", "fid", "fid_to_teacher"):
        assert result["metrics"][key]["value"] == whole["metrics"][key]["value"], key
    for i in range(3):
        assert np.array_equal(np.asarray(Image.open(sharded / "images" / f"{i:05d}.png")),
                              np.asarray(Image.open(runs["student"] / "images" / f"{i:05d}.png")))


@pytest.mark.parametrize("bad", ["2/2", "1/0", "a/2", "1"])
def test_a_bad_shard_is_refused_in_one_line(bad, kit, tmp_path, capsys):
    try:
        code, _, err = _eval(capsys, "--model", kit.diffusers, "--sampler", "tlcm:2", "--limit", "2",
                             "--out", tmp_path / "out", "--shard", bad)
    except SystemExit as exit_:                      # argparse: not of the form K/N
        code, err = exit_.code, capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "--shard" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "images").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU/gloo launch test; on a CUDA machine ranks would use NCCL")
def test_accelerate_launch_shards_the_prompts_and_scores_once(runs, metric_weights, tmp_path):
    """Two processes under ``accelerate launch`` (gloo): each makes its half, the main process scores all,
    and the numbers equal the one-process run's."""
    import os
    import shutil
    import socket
    import subprocess
    from pathlib import Path
    assert shutil.which("accelerate"), "the accelerate CLI is not on PATH"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "launched"
    repo = Path(__file__).resolve().parents[1]
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
           "-m", "tlcm", *_out_arg(runs["student_args"], out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(repo), str(metric_weights["plugin"]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    whole = json.loads((runs["student"] / "eval.json").read_text(encoding="utf-8"))
    assert result["images"]["count"] == 3 and result["images"]["generated_this_run"] == 2     # 0 and 2; 1 by rank 1
    for key in ("clip_score", "aesthetic_score", "fid", "fid_to_teacher"):
        assert result["metrics"][key]["value"] == pytest.approx(whole["metrics"][key]["value"], abs=1e-9), key
    assert proc.stdout.count("| TLCM (this run, tlcm:2) |") == 1                      # one process scored


def test_a_folder_of_another_run_is_refused(runs, kit, capsys):
    code, _, err = _eval(capsys, "--model", kit.diffusers, "--sampler", "tlcm:3", "--limit", "3", "--seed", "10",
                         "--out", runs["student"])
    assert code == 2 and "made by another run" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("which", ["model", "lora", "clip", "aesthetic", "fid"])
def test_a_missing_weight_is_a_one_line_error_naming_it(tmp_path, kit, metric_weights, capsys, which):
    missing = tmp_path / f"missing-{which}"
    args = ["--model", kit.diffusers, "--sampler", "tlcm:2", "--limit", "2", "--out", tmp_path / "out"]
    args = {"model": ["--model", missing, "--sampler", "tlcm:2", "--limit", "2", "--out", tmp_path / "out"],
            "lora": args + ["--lora", f"{missing}.safetensors:0.5"],
            "clip": args + ["--clip-model", missing],
            "aesthetic": args + ["--aesthetic-clip", metric_weights["clip"], "--aesthetic-head", missing],
            "fid": args + ["--fid-reference", metric_weights["reference"], "--fid-features", "x:y",
                           "--fid-weights", missing]}[which]
    code, out, err = _eval(capsys, *args)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("tlcm: ") and str(missing) in err
    assert not (tmp_path / "out" / "images").exists()      # refused before any image was made


def test_fid_without_weights_names_the_file_to_download(tmp_path, kit, metric_weights, capsys):
    code, _, err = _eval(capsys, "--model", kit.diffusers, "--sampler", "tlcm:2", "--limit", "2",
                         "--fid-reference", metric_weights["reference"], "--out", tmp_path / "out")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--fid-weights" in err and "pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05" in err
    assert not (tmp_path / "out" / "images").exists()      # refused before any image was made


def readme_eval_commands() -> list[list[str]]:
    """The commands of the README's Evaluate section, as a shell would split them."""
    import shlex
    from pathlib import Path
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Evaluate"):]
    start = section.index("```bash") + len("```bash")
    block = section[start:section.index("```", start)].replace("\\\n", " ")
    return [shlex.split(line) for line in block.strip().splitlines()]


def test_readme_table1_commands_run_on_the_tiny_kit(tmp_path, kit, metric_weights):
    """A dry run of the README's own commands: only the weight paths are swapped for tiny stand-ins (the FID
    Inception at its real size, random weights) and the prompt count is limited, so a renamed flag or a
    wrong sampler spec in the README fails here."""
    from fid_reference import random_fid_state
    from tlcm.evaluation.inception import InceptionFeatures
    fid_inception_weights = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(random_fid_state(6), fid_inception_weights)
    from tlcm.lora import LoraFile, LoraModule, save_lora
    from tlcm.models import load_sdxl_pipeline
    unet = load_sdxl_pipeline(kit.diffusers, device="cpu").unet
    g = torch.Generator().manual_seed(4)
    modules = {}
    for name in ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
                 "mid_block.attentions.0.transformer_blocks.0.attn2.to_v"):
        w = unet.get_submodule(name).weight
        modules[name] = LoraModule(0.1 * torch.randn(4, w.shape[1], generator=g),
                                   0.1 * torch.randn(w.shape[0], 4, generator=g), 8.0)
    official = save_lora(LoraFile(modules, "peft"), tmp_path / "TLCMSDXL", "peft")
    stand_ins = {"/models/stable-diffusion-xl-base-1.0": kit.diffusers, "/models/TLCMSDXL": official,
                 "/models/CLIP-ViT-g-14-laion2B-s12B-b42K": metric_weights["clip"],
                 "/models/clip-vit-large-patch14": metric_weights["clip"],
                 "/models/sac+logos+ava1-l14-linearMSE.pth": metric_weights["aesthetic_head"],
                 "/models/pt_inception-2015-12-05-6726825d.pth": fid_inception_weights,
                 "/models/ImageReward/ImageReward.pt": metric_weights["image_reward"],
                 "/models/bert-base-uncased": metric_weights["reward_tokenizer"]}
    commands = readme_eval_commands()
    assert len(commands) == 2 and all(c[:4] == ["python", "-m", "tlcm", "eval"] for c in commands)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        for command in commands:
            args = [str(stand_ins.get(a, a)).replace("outputs/eval", str(tmp_path / "eval")) for a in command[3:]]
            assert not [a for a in args if a.startswith("/models/")], args     # every weight has a stand-in
            assert main([*args, "--limit", "2", "--no-progress", "--device", "cpu"]) == 0, command
    finally:
        torch.set_num_threads(threads)
    result = json.loads((tmp_path / "eval" / "tlcm4" / "eval.json").read_text(encoding="utf-8"))
    assert result["prompts"]["count"] == 2 and result["sampler"]["spec"] == "tlcm:4"
    assert all(result["metrics"][key]["value"] is not None
               for key in ("clip_score", "aesthetic_score", "image_reward", "fid_to_teacher"))
    assert result["metrics"]["fid_to_teacher"]["features"] == InceptionFeatures.name     # the built-in default
    assert "| TLCM (this run, tlcm:4) | 4 |" in (tmp_path / "eval" / "tlcm4" / "table1.md").read_text()
