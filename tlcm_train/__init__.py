"""Data-free TLCM distillation trainer: stage 1 MLCD and stage 2 improved LCD on one LoRA adapter.

Entry points: ``python -m tlcm_train`` (:mod:`tlcm_train.cli`), :class:`tlcm_train.loop.Trainer`. Design notes:
docs/trainer.md (memory sharing, adapter-switch trap, checkpoints, multi-GPU); recipe: docs/method.md §3.
"""
