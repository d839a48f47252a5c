"""Errors next to the field they are about, worded with the labels on the page.

The checks behind the form speak in config keys (``mlcd.lr: must be > 0``: the trainer's own messages, the
same as on the command line) or in the path and launch fields' labels (``Base model: ... does not
exist``). ``Spots`` maps both back to the field: the top message then names the field's label (and the
config key, which the command line and config files use), and the field itself shows the message under
its label and is outlined. A note is ``(kind, text, new)``: kind "error" or "ok", ``new`` for the error
the last action found (the page scrolls to it).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

KEY_MESSAGE = re.compile(r"^(?P<key>[\w]+(?:[./][\w]+)+)(?P<extra> \([^)]*\))?: (?P<text>.*)$", re.S)
LABEL_MESSAGE = re.compile(r"^(?P<label>[^:]{1,60}): (?P<text>.*)$", re.S)
ERROR, OK = "error", "ok"
TAB_NAMES = {"setup": "Setup", "run": "Run", "try": "Try it"}


@dataclass(frozen=True)
class Spot:
    """One field that messages can point at."""

    key: str                # the note's key: a config key, or e.g. "launch.num_processes"
    where: str              # how the page names it ("Stage 1 steps", "Advanced › mlcd › lr")
    elem_id: str
    info: str               # its own info line, put back once the note is gone
    tab: str                # the tab it is on
    advanced: bool = False  # inside the Advanced accordion
    config_key: bool = False


@dataclass(frozen=True)
class Located:
    keys: tuple[str, ...]
    where: str
    text: str
    config_key: str = ""


@dataclass
class Spots:
    """The fields of one part of the page, and the message prefixes that point at them."""

    spots: dict[str, Spot] = field(default_factory=dict)
    prefixes: dict[str, tuple[str, ...]] = field(default_factory=dict)   # message label → keys
    starts: dict[str, tuple[str, ...]] = field(default_factory=dict)     # a message's opening words → keys
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)     # a compound config key → keys

    def add(self, spot: Spot, *labels: str) -> None:
        self.spots[spot.key] = spot
        for label in labels:
            self.prefixes[label.lower()] = (spot.key,)

    def locate(self, err: Exception) -> Located | None:
        """The field(s) ``err`` is about, with its text less the prefix that named them."""
        message = str(err)
        match = KEY_MESSAGE.match(message)
        if match and (match["key"] in self.spots or match["key"] in self.groups):
            key = match["key"]
            keys = self.groups.get(key, (key,))
            text = ((match["extra"] or "").strip() + " " if match["extra"] else "") + match["text"]
            where = " / ".join(self.spots[k].where for k in keys)
            return Located(keys, where, text, key)
        lowered = message.lower()
        for start, keys in self.starts.items():
            if lowered.startswith(start):
                return Located(keys, " / ".join(self.spots[k].where for k in keys), message)
        match = LABEL_MESSAGE.match(message)
        if match:
            label = match["label"].lower()
            for prefix in sorted(self.prefixes, key=len, reverse=True):
                if label == prefix or label.startswith(prefix + " ("):
                    keys = self.prefixes[prefix]
                    return Located(keys, " / ".join(self.spots[k].where for k in keys), match["text"])
        return None

    def message(self, err: Exception, located: Located | None) -> str:
        """The top message: the field's label first, then what is wrong."""
        if located is None:
            return f"**Error:** {err}"
        key = f" (`{located.config_key}`)" if located.config_key else ""
        tab = {self.spots[k].tab for k in located.keys}
        place = f", {TAB_NAMES.get(tab.pop(), '')} tab" if len(tab) == 1 else ""
        return f"**Error** in **{located.where}**{key}{place}: {located.text}"

    def notes_after(self, notes: dict[str, Any] | None, located: Located | None) -> dict[str, tuple]:
        """``notes`` without this part's errors (an action re-checked them) and without the "new" mark,
        plus the error just found."""
        kept = {k: (kind, text, False) for k, (kind, text, _) in (notes or {}).items()
                if not (kind == ERROR and k in self.spots)}
        if located is not None:
            for key in located.keys:
                kept[key] = (ERROR, located.text, True)
        return kept


def render(all_spots: dict[str, Spot], notes: dict[str, tuple] | None, shown: dict[str, tuple] | None) -> tuple:
    """For each spot (in ``all_spots`` order) an update of its info line and outline where its note changed
    (None where unchanged); whether a new error sits under Advanced; the tab of the first new error."""
    import gradio as gr
    notes, shown = notes or {}, shown or {}
    updates = []
    for key, spot in all_spots.items():
        want = notes.get(key)
        if want == shown.get(key):
            updates.append(None)
            continue
        if want is None:
            updates.append(gr.update(info=spot.info, elem_classes=[]))
            continue
        kind, text, new = want
        classes = ["tlcm-invalid"] + (["tlcm-new"] if new else []) if kind == ERROR else ["tlcm-valid"]
        updates.append(gr.update(info=("⚠ " if kind == ERROR else "✓ ") + text, elem_classes=classes))
    fresh = [all_spots[k] for k, (kind, _, new) in notes.items() if kind == ERROR and new and k in all_spots]
    return updates, any(s.advanced for s in fresh), (fresh[0].tab if fresh else None)
