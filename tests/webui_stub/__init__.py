"""Stand-in WebUI for the extension's tests: ``modules`` (A1111 1.10 surfaces), a recording ``gradio``,
PyPI k-diffusion loaded by file, and ``harness`` helpers. ``modules``/``gradio`` are importable only
while a test's fixture has put this folder on ``sys.path``."""
