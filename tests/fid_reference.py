"""pytorch-fid itself, as the reference for the built-in FID Inception: pytorch-fid 0.3.0 and the torchvision
release that pairs with the installed torch, installed with ``pip --target`` into the git-ignored
``.cache/fid-reference/`` (never into the environment), and run in a subprocess with that folder on its path.

``pytorch_fid.inception.InceptionV3`` fetches its weights from a URL; the subprocess hands it a local state
dict instead (its download function is replaced), so the network, the blocks' pooling and the input
resizing are pytorch-fid's and torchvision's own code.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from pip_target import installed, run_reference, torchvision_requirement
from tlcm.evaluation.inception import FEATURES, FidInception

PYTORCH_FID = "pytorch-fid==0.3.0"

_SCRIPT = r"""
import json, sys
import numpy as np, torch
from PIL import Image
import pytorch_fid.inception as inception
weights, images = sys.argv[1], sys.argv[2:]
inception.load_state_dict_from_url = lambda url, progress=True: torch.load(weights, weights_only=True)
model = inception.InceptionV3([inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
rows = []
with torch.no_grad():
    for path in images:       # pytorch-fid's dataset: PIL RGB -> ToTensor -> model(batch)[0], squeezed
        pixels = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0)
        rows.append(model(pixels.permute(2, 0, 1)[None])[0][0, :, 0, 0].double().tolist())
print(json.dumps(rows))
"""


PYTORCH_FID_REQUIREMENTS = [torchvision_requirement(), PYTORCH_FID]


def pytorch_fid_features(weights: Path, images: list[Path]) -> list[list[float]]:
    """pytorch-fid's 2048-d pool3 features of ``images`` with the state dict in ``weights`` (a torch.save file)."""
    folder = installed("fid-reference", PYTORCH_FID_REQUIREMENTS, "pytorch_fid")
    return json.loads(run_reference(folder, _SCRIPT, [str(weights), *map(str, images)], "pytorch-fid"))


def random_fid_state(seed: int) -> dict[str, torch.Tensor]:
    """Every tensor of the FID Inception file, seeded: He-scaled convolutions, batch-norm statistics and
    affine values away from 0 and 1 (a dropped or swapped one shows), and the classifier the file carries."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, tensor in FidInception().state_dict().items():
        if key.endswith("conv.weight"):
            value = torch.randn(tensor.shape, generator=g) * (2.0 / tensor[0].numel()) ** 0.5
        elif key.endswith("bn.running_var"):
            value = 0.5 + torch.rand(tensor.shape, generator=g)
        elif key.endswith("bn.weight"):
            value = 1.0 + 0.2 * torch.randn(tensor.shape, generator=g)
        elif key.endswith(("bn.bias", "bn.running_mean")):
            value = 0.2 * torch.randn(tensor.shape, generator=g)
        else:                                 # num_batches_tracked
            value = torch.zeros_like(tensor)
        state[key] = value
    state["fc.weight"] = torch.randn(1008, FEATURES, generator=g) / FEATURES ** 0.5
    state["fc.bias"] = torch.randn(1008, generator=g)
    return state
