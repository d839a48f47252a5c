"""``modules.scripts``: ``Script``, ``AlwaysVisible``, loading a script file the way the WebUI does, a runner.

``load_scripts`` executes each file as a fresh module and collects its ``Script`` subclasses, as A1111's
``load_scripts`` does at start-up and on "Reload UI" (while ``modules.*`` keep their state).
"""
import importlib.util
import re
from dataclasses import dataclass

AlwaysVisible = object()


@dataclass
class OnComponent:
    component: object


class Script:
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    infotext_fields = None
    paste_field_names = None
    on_after_component_elem_id = None

    def title(self):
        raise NotImplementedError()

    def ui(self, is_img2img):
        pass

    def show(self, is_img2img):
        return True

    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def after_extra_networks_activate(self, p, *args, **kwargs):
        pass

    def on_after_component(self, callback, *, elem_id):
        if self.on_after_component_elem_id is None:
            self.on_after_component_elem_id = []
        self.on_after_component_elem_id.append((elem_id, callback))

    def elem_id(self, item_id):
        need_tabname = self.show(True) == self.show(False)
        tabkind = 'img2img' if self.is_img2img else 'txt2img'
        tabname = f"{tabkind}_" if need_tabname else ""
        title = re.sub(r'[^a-z_0-9]', '', re.sub(r'\s', '_', self.title().lower()))
        return f'script_{tabname}{title}_{item_id}'


scripts_data = []


def load_scripts(files):
    """Run each script file as a new module and collect its Script subclasses (A1111 ``load_scripts``)."""
    scripts_data.clear()
    for index, path in enumerate(files):
        spec = importlib.util.spec_from_file_location(f"webui_script_{index}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for value in module.__dict__.values():
            if isinstance(value, type) and issubclass(value, Script) and value is not Script:
                scripts_data.append(value)
    return scripts_data


class ScriptRunner:
    """The always-visible scripts of one tab: UI inputs, infotext fields, hooks (errors are logged, not raised).

    ``setup_ui`` first creates the tab's own sampler/schedule/steps/CFG controls (elem_ids as in A1111 1.10
    ``processing_scripts/sampler.py`` and ``ui.py``) and fires ``on_after_component`` callbacks, then the
    scripts' ``ui``.
    """

    def __init__(self, is_img2img):
        self.is_img2img = is_img2img
        self.scripts = []
        self.inputs = []
        self.infotext_fields = []
        self.errors = []
        for cls in scripts_data:
            script = cls()
            script.is_img2img, script.is_txt2img = is_img2img, not is_img2img
            if script.show(is_img2img) is AlwaysVisible:
                script.alwayson = True
                self.scripts.append(script)

    def setup_ui(self):
        import gradio as gr
        tab = "img2img" if self.is_img2img else "txt2img"
        self.main_controls = {
            f"{tab}_sampling": gr.Dropdown(label='Sampling method', value="DPM++ 2M", elem_id=f"{tab}_sampling"),
            f"{tab}_scheduler": gr.Dropdown(label='Schedule type', value="Automatic", elem_id=f"{tab}_scheduler"),
            f"{tab}_steps": gr.Slider(label="Sampling steps", value=20, elem_id=f"{tab}_steps"),
            f"{tab}_cfg_scale": gr.Slider(label="CFG Scale", value=7.0, elem_id=f"{tab}_cfg_scale"),
        }
        for elem_id, component in self.main_controls.items():
            for script in self.scripts:
                for wanted, callback in script.on_after_component_elem_id or []:
                    if wanted == elem_id:
                        callback(OnComponent(component=component))
        for script in self.scripts:
            controls = script.ui(self.is_img2img) or []
            script.args_from, script.args_to = len(self.inputs), len(self.inputs) + len(controls)
            self.inputs.extend(controls)
            self.infotext_fields.extend(script.infotext_fields or [])

    def _call(self, hook, p, **kwargs):
        for script in self.scripts:
            try:
                getattr(script, hook)(p, *p.script_args[script.args_from:script.args_to], **kwargs)
            except Exception as err:       # A1111: errors.report(f"Error running {hook}: ...")
                self.errors.append((hook, err))

    def before_process(self, p):
        self._call("before_process", p)

    def process(self, p):
        self._call("process", p)

    def after_extra_networks_activate(self, p, **kwargs):
        self._call("after_extra_networks_activate", p, **kwargs)
