"""The built-in FID Inception against pytorch-fid itself: the same weight file (pytorch-fid's layout, random
seeded values away from the identity), the same images of odd sizes, the same 2048-d features."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fid_reference import pytorch_fid_features, random_fid_state
from pip_target import ReferenceUnavailable
from tlcm.evaluation.inception import FEATURES, fid_inception


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("fid") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(random_fid_state(3), path)          # the released file's format: a torch.save'd dict
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder, rng = tmp_path_factory.mktemp("fid_images"), np.random.default_rng(5)
    paths = []
    for i, (h, w) in enumerate([(64, 48), (40, 40), (200, 310)]):    # below, at and above 299 on either side
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        paths.append(folder / f"{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def test_features_equal_pytorch_fid(weights, images):
    try:
        expected = np.array(pytorch_fid_features(weights, images))
    except ReferenceUnavailable as err:        # a failure in CI: .ci/run requires every layer
        pytest.skip(str(err))
    extractor = fid_inception(str(weights))
    got = extractor([Image.open(p) for p in images])
    assert got.shape == expected.shape == (len(images), FEATURES)
    assert expected.std() > 0.05                  # features that differ, not a dead network
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_a_file_of_another_network_is_refused_naming_keys(tmp_path):
    state = random_fid_state(4)
    state["Mixed_7c.branch_pool.conv.weight"] = torch.zeros(192, 2048, 3, 3)
    del state["Mixed_5b.branch1x1.bn.running_var"]
    path = tmp_path / "other.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing \['Mixed_5b.branch1x1.bn.running_var'\].*"
                                         r"other shapes \['Mixed_7c.branch_pool.conv.weight'\]"):
        fid_inception(str(path))
    with pytest.raises(ValueError, match="FID needs --fid-weights: pytorch-fid's FID Inception weights "
                                         "pt_inception-2015-12-05-6726825d.pth"):
        fid_inception(None)
