"""``modules.rng.ImageRNG``: one generator per seed; ``next()`` gives the start noise first, then fresh noise.

As in A1111 1.10, the first call draws with the seed and later calls continue each image's own
generator, so an image's noise does not depend on the batch it is in.
"""
import torch


class ImageRNG:
    def __init__(self, shape, seeds, subseeds=None, subseed_strength=0.0, seed_resize_from_h=0, seed_resize_from_w=0):
        self.shape = tuple(map(int, shape))
        self.seeds = seeds
        self.generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
        self.is_first = True

    def first(self):
        return torch.stack([torch.randn(self.shape, generator=g) for g in self.generators])

    def next(self):
        if self.is_first:
            self.is_first = False
            return self.first()
        return torch.stack([torch.randn(self.shape, generator=g) for g in self.generators])
