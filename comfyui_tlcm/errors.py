"""Core errors in the form ComfyUI shows users: one line, a builtin type name, the file the user picked.

ComfyUI's error dialog reads ``<exception type>: <message>``, and it spells the type with its module unless
the class is a builtin (``execution.full_type_name``). ComfyUI names the pack's package after its folder's
path, so the core's ``LoraMatchError`` would read ``/…/custom_nodes/<folder>.tlcm.lora.match.LoraMatchError``:
noise that names no file. Every user error of the core (no fit, bad file, NaN/Inf) is a ``ValueError``, so the
nodes re-raise it as a plain ``ValueError`` whose one-line message starts with the chosen file, chained to
the original so the console traceback keeps the detail.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..tlcm.errors import one_line


@contextmanager
def user_errors(subject: str, full_path: str | None = None) -> Iterator[None]:
    """Re-raise a ``ValueError`` as ``ValueError("<subject>: <one-line message>")``.

    ``full_path``: where ``subject`` lives on disk; core messages quoting it get ``subject`` instead, so the
    file is named once and as the user picked it in the dropdown.
    """
    try:
        yield
    except ValueError as err:
        message = one_line(err)
        if full_path:
            message = message.replace(str(full_path), subject)
        if not message.startswith(f"{subject}: "):
            message = f"{subject}: {message}"
        raise ValueError(message) from err
