"""TLCM's preference loss (Eq. 11): a frozen image-text scorer on the VAE-decoded student x̂0.

:mod:`.scorer` (protocol, hinge loss, factory), :mod:`.mps` (the paper's MPS scorer, re-implemented),
:mod:`.toy_scorer` (the toy world's stand-in), :mod:`.decode` (memory-aware differentiable decode),
:mod:`.technique` (the :class:`~train.technique.Technique` the loop runs).
"""
