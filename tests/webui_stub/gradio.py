"""A recording stand-in for the few gradio calls the TLCM accordion makes (gradio is not installed in CI).

Components remember their constructor arguments and ``value`` (the paste step reads ``type(value)``);
``Button.click`` and ``change`` record their handlers so a test can fire them; ``update`` returns its kwargs.
"""
from __future__ import annotations

created: list = []


def update(**kwargs):
    return kwargs


class Component:
    def __init__(self, *args, value=None, **kwargs):
        self.args, self.kwargs = args, kwargs
        self.value = value() if callable(value) else value
        self.label = kwargs.get("label")
        self.listeners = []
        created.append(self)

    def change(self, fn=None, inputs=None, outputs=None, **kwargs):
        self.listeners.append((fn, inputs, outputs))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class Accordion(Component):
    pass


class Checkbox(Component):
    pass


class Dropdown(Component):
    pass


class Slider(Component):
    pass


class Markdown(Component):
    pass


class HTML(Component):
    pass


class Button(Component):
    def click(self, fn=None, inputs=None, outputs=None, **kwargs):
        self.handler, self.outputs = fn, outputs
