"""The TLCM trainer app (``tlcm-trainer``): a Gradio front-end that launches ``python -m tlcm_train``.

It writes no training code of its own: the form is the trainer's config, the Run tab watches the
trainer's files, the Try-it tab uses the core's generation and LoRA export.
"""
