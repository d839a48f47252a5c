"""TLCM's preference loss (Eq. 11): a frozen image-text scorer on the VAE-decoded student x̂0.

:mod:`.scorer` (protocol, hinge loss, the plugin interface), :mod:`.mps` (the paper's MPS scorer,
re-implemented), :mod:`.decode` (memory-aware differentiable decode),
:mod:`.technique` (the :class:`~tlcm_train.technique.Technique` the loop runs).
"""
