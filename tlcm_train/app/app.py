"""The Gradio layout: Setup (form → config → command), Run (launch, watch, stop, resume), Try it.

Thin by design: the form is derived from the trainer's config (``form``), the command is the CLI's
(``commands``), runs are subprocesses (``jobs``) read back from their folder (``progress``), and
generation/export is the core's (``try_it``). Every handler turns bad input, a value beyond the app's
limits (``limits``) included, into a message on the page and leaves the form as it was; when the message
is about one field, that field shows it under its label and is outlined (``feedback``), and the page
opens its tab and scrolls to it. Files are written only where the user pointed, never over an existing
one unconfirmed: a config inside the chosen folder with "Overwrite" ticked, a fresh run over an earlier
one with "Start over" ticked.

The command box is rebuilt from the form whenever a field changes (a preset changes many at once), so
it is always what Train would run; the path checks run when a path field loses focus. Number fields
never round: a whole-number field given 2.5 is refused, naming the field.

Each tab has a builder (its layout, returning a small dataclass of the components events touch) and a
``wire_*`` function (its handlers and events), so ``build_app`` only assembles them.
"""
from __future__ import annotations

import html
import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gradio as gr
import yaml

from tlcm.files import atomic_write_text
from tlcm.lora import FORMATS
from tlcm.schedules import DEFAULT_STEPS, MAX_STEPS, MIN_STEPS, STEP_RANGE_TEXT
from tlcm_train.config import Config, ConfigError, load_config
from tlcm_train.run_folder import earlier_run_outputs
from tlcm_train.stage_techniques import needed as needed_techniques

from . import form
from .commands import LaunchOptions, copy_config, parse_command, show_command
from .feedback import ERROR, OK, Spot, Spots, render
from .gpu import GpuWatch, memory_text
from .jobs import JobError, JobInfo, JobManager, has_checkpoint
from .limits import MAX_GUIDANCE, MAX_TEACHER_STEPS, check_whole
from .plot import loss_svg
from .paths import (PathError, check_config_file, check_model, check_output_dir, check_prompt_files,
                    check_scorer_weights, file_in_folder)
from .presets import GPU_PRESETS, Preset
from .progress import RunView, read_run
from .sample_grids import labelled, note
from .try_it import TEACHER_SAMPLERS, TEACHER_STEPS, Exports, Sampler, generate_images, teacher_images

STAGE_KEYS = tuple(key for pair in form.STAGES.items() for key in pair)       # every stage's toggle and steps
SCORER_KEYS = ("mps.scorer", "mps.scorer_weights")
RUN_KEYS = ("train.mixed_precision", "train.batch_size", "output.checkpoint_every", "output.sample_every")
MAIN_KEYS = ("model.path", "data.prompts", "output.dir", *STAGE_KEYS, *SCORER_KEYS, *RUN_KEYS, "data.sample_prompts")
LAUNCH_FIELDS = {"num_processes": "GPUs / processes (total)", "num_machines": "machines",
                 "machine_rank": "this machine's rank", "main_process_ip": "main machine IP",
                 "main_process_port": "main machine port", "gpu_ids": "GPU ids (e.g. 0,1; empty = all)"}
USER_ERRORS = (ConfigError, PathError, JobError, ValueError, OSError)   # OSError: e.g. no permission
CONFIG_FILE = "Config file"
HEADER = (f"# TLCM trainer\nDistil an SDXL model into a TLCM LoRA from prompts only. "
          f"Sampling steps: {STEP_RANGE_TEXT}.")
CSS = """
.tlcm-danger {background:#b91c1c; color:white; padding:8px 12px; border-radius:6px; font-weight:bold}
.tlcm-invalid {outline:2px solid #b91c1c; outline-offset:1px; border-radius:6px}
.tlcm-invalid .info-text {color:#b91c1c; font-weight:600}
.tlcm-valid .info-text {color:#15803d}
"""
FOOTER = ("<small id='remote-hint'>**Remote access:** the app listens on this machine only. From another computer: "
          "start it with `tlcm-trainer --host 0.0.0.0 --password <secret>` (login `tlcm`), or keep it local and "
          "tunnel: `ssh -L 7870:127.0.0.1:7870 <this machine>`, then open http://127.0.0.1:7870.</small>")
SCROLL_JS = ("() => { setTimeout(() => { const f = document.querySelector('.tlcm-new'); "
             "if (f) f.scrollIntoView({block: 'center'}); }, 200); }")
ADVANCED = "Advanced: every other hyperparameter"
NOTES_QUEUE = "field-notes"     # events that read and write the field notes run one at a time, so none is lost


def elem_id(key: str) -> str:
    return f"f-{key.replace('.', '-')}"


def field_info(field: form.Field, advanced: bool) -> str:
    """The field's own info line; under Advanced also the paper's value, to compare with what is set."""
    if not advanced:
        return field.info
    paper = f"paper: {form.paper_text(field.key)}"
    return f"{field.info} · {paper}" if field.info else paper


def _component(field: form.Field, value: Any, advanced: bool = False) -> gr.components.Component:
    kwargs = dict(label=field.label, info=field_info(field, advanced) or None, value=value, elem_id=elem_id(field.key))
    if field.kind == "bool":
        return gr.Checkbox(**kwargs)
    if field.kind in ("int", "float"):         # never rounded here: from_form refuses 2.5 for a whole number
        return gr.Number(precision=None, **kwargs)
    if field.kind == "choice":
        return gr.Dropdown(choices=list(field.choices), **kwargs)
    return gr.Textbox(lines=3 if field.kind == "lines" else 1, max_lines=20, **kwargs)


def _launch_component(name: str, label: str) -> gr.components.Component:
    value = getattr(LaunchOptions(), name)
    if isinstance(value, str):
        return gr.Textbox(label=label, value=value, elem_id=f"l-{name}")
    return gr.Number(label=label, value=value, precision=None, elem_id=f"l-{name}")


def _initial_form(preset: Preset) -> tuple[dict[str, Any], str]:
    """Defaults with the default preset applied, and a note if the preset could not be prepared."""
    values = form.to_form(Config())
    try:
        values.update(form.form_values(preset.values()))
        return values, ""
    except Exception as err:        # e.g. the toy model's tokenizer package is missing: the form still works
        return values, f"**Warning:** preset {preset.name!r} unavailable: {err}"


def _summary(preset: Preset) -> str:
    try:
        return preset.summary
    except Exception as err:        # e.g. a preset's config file unreadable: the page still opens
        return f"(no summary: {err})"


def _user_error(err: Exception) -> str:
    return f"**Error:** {err}"


def advanced_label(source: str) -> str:
    """The Advanced section's title: where its values come from (each field's info gives the paper's)."""
    return f"{ADVANCED}, {source} (the paper's value is under each field)"


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else (f"{minutes}m {secs:02d}s" if minutes else f"{secs}s")


def tensorboard_hint(view: RunView) -> str:
    """How to open the run's TensorBoard logs, or how to get them (the trainer writes them only when the
    ``tensorboard`` package is installed; ``logs/metrics.jsonl`` is always written)."""
    if view.tensorboard is not None:
        command = html.escape(f"tensorboard --logdir {shlex.quote(str(view.tensorboard))}")
        return (f"<small id='tensorboard'>TensorBoard: run <code>{command}</code> on this machine, then open "
                "<a href='http://localhost:6006' target='_blank' rel='noopener'>http://localhost:6006</a></small>")
    if view.state == "idle":
        return ""
    return ("<small id='tensorboard'>TensorBoard logs: <code>pip install tensorboard</code> before training and "
            "the trainer writes them to logs/tensorboard (the curves are always in logs/metrics.jsonl)</small>")


def status_html(view: RunView, folder: Path | None, gpu_line: str = "") -> str:
    """State line with a progress bar, the step a resumed run continues from, ETA, GPU memory; the reason
    and hint for a failed run; where the TensorBoard logs are."""
    fraction = view.step / view.total if view.total else 0.0
    speed = f"{view.it_per_s:.2f} it/s" if view.it_per_s else "– it/s"
    state = view.state.upper()
    if view.resumed_from is not None and view.state == "starting":
        state += f" (resuming from step {view.resumed_from}: loading the model)"
    resumed = (f" · <span id='run-resumed'>resumed from step {view.resumed_from}</span>"
               if view.resumed_from is not None else "")
    text = (f"<div id='run-state' data-state='{view.state}'><b>{state}</b> · step "
            f"<span id='run-step'>{view.step}</span>/{view.total or '?'}{resumed} · {speed} · "
            f"<span id='run-eta'>ETA {_duration(view.eta_s)}</span>"
            f"<br><progress max='1' value='{fraction:.4f}' style='width:100%'></progress></div>")
    if gpu_line:
        text += f"<small id='gpu-memory'>{html.escape(gpu_line)}</small><br>"
    if view.reason:
        text += (f"<div class='tlcm-danger' id='run-reason'>Run failed: {html.escape(view.reason)}"
                 "</div><small>The last log lines are below; fix the setting they name and press Train or "
                 "Resume latest.</small><br>")
    if folder is not None:
        text += f"<small>output folder: {html.escape(str(folder))}</small><br>"
    return text + tensorboard_hint(view)


def _launch_options(values: tuple | list) -> LaunchOptions:
    numbers = {n for n, v in vars(LaunchOptions()).items() if isinstance(v, int)}     # the largest is a port
    return LaunchOptions(**{n: check_whole(LAUNCH_FIELDS[n], v, 0, 65535) if n in numbers else str(v or "")
                            for n, v in zip(LAUNCH_FIELDS, values)}).validate()


def read_form(args: tuple | list) -> tuple[Config, LaunchOptions]:
    """The validated config with absolute, checked paths, and the launch options, from the form's values
    (``form.KEYS`` order, then ``LAUNCH_FIELDS``). The scorer weights are checked only while stages 3-4 use
    them, so a stale path in a switched-off stage never blocks a run."""
    config = form.from_form(dict(zip(form.KEYS, args[:len(form.KEYS)])))
    launch = _launch_options(args[len(form.KEYS):])
    prompts, _ = check_prompt_files(config.data.prompts)
    scorer = config.mps.scorer_weights
    if "mps" in needed_techniques(config):           # stages 3-4 run with the preference term
        scorer = str(check_scorer_weights(scorer, config.mps.scorer))
    return copy_config(config, model={"path": str(check_model(config.model.path))},
                       data={"prompts": [str(p) for p in prompts]}, mps={"scorer_weights": scorer},
                       output={"dir": str(check_output_dir(config.output.dir))}), launch


def preview_form(args: tuple | list) -> tuple[Config, LaunchOptions]:
    """``read_form`` without opening any path: the values checked, the paths made absolute as Train makes
    them. Cheap enough to run on every change of the form."""
    config = form.from_form(dict(zip(form.KEYS, args[:len(form.KEYS)])))
    launch = _launch_options(args[len(form.KEYS):])

    def absolute(raw: str) -> str:
        return str(Path(raw.strip()).expanduser().resolve()) if raw.strip() else raw
    scorer = config.mps.scorer_weights
    if "mps" in needed_techniques(config):
        scorer = absolute(scorer)
    return copy_config(config, model={"path": absolute(config.model.path)},
                       data={"prompts": [absolute(p) for p in config.data.prompts]}, mps={"scorer_weights": scorer},
                       output={"dir": absolute(config.output.dir)}), launch


def command_preview(args: tuple | list, spots: Spots) -> str:
    """The command box's text: the command Train would run, or why Train would refuse the form."""
    try:
        return show_command(*preview_form(args))
    except USER_ERRORS as err:
        located = spots.locate(err)
        what = f"{located.where}: {located.text}" if located else str(err)
        return f"# Train would refuse the form as it is: {what}\n# Fix that field and this box shows the command."


def save_config_file(config: Config, folder: str, name: str, overwrite: bool) -> str:
    """Write ``config`` as YAML to ``name`` inside ``folder``: never outside that folder, and over an
    existing file only when the user ticked ``overwrite``."""
    target = check_config_file(file_in_folder(folder, name, CONFIG_FILE), must_exist=False)
    if target.suffix.lower() == ".toml":
        raise PathError(f"{CONFIG_FILE}: saving writes YAML; use a .yaml name (TOML files load fine)")
    try:
        atomic_write_text(target, yaml.safe_dump(config.to_dict(), sort_keys=False), overwrite=overwrite)
    except FileExistsError:
        raise PathError(f"{CONFIG_FILE}: {target} exists; tick \"Overwrite\" and press Save config again to "
                        "replace it") from None
    return f"Saved {target} (run it with `python -m tlcm_train --config {shlex.quote(str(target))}`)"


def load_config_file(folder: str, name: str) -> Config:
    """The config file ``name`` inside ``folder``."""
    return load_config(check_config_file(file_in_folder(folder, name, CONFIG_FILE), must_exist=True))


def started(info: JobInfo, verb: str) -> str:
    return f"{verb} in {info.output_dir}: watch it here; closing or reloading the page does not stop it"


def model_note(raw: str) -> str:
    path = check_model(raw)
    return "diffusers model folder found" if path.is_dir() else "single-file checkpoint found"


def prompts_note(raw: str) -> str:
    files = [line for line in str(raw or "").splitlines() if line.strip()]
    _, count = check_prompt_files(files)
    return f"{count:,} prompts in {len(files)} file{'s' if len(files) != 1 else ''}"


def output_note(raw: str) -> str:
    path = check_output_dir(raw)
    if not path.exists():
        return "a new folder: created when training starts"
    if earlier_run_outputs(path):
        return "holds an earlier run: Resume latest continues it, Start over replaces it (Run tab)"
    return "an existing folder"


Component = gr.components.Component


@dataclass(frozen=True)
class SetupTab:
    """The Setup tab's components that events read or write."""
    preset: gr.Dropdown
    preset_info: gr.Markdown
    inputs: dict[str, Component]            # every config field, by ``form.KEYS`` key
    launch: dict[str, Component]            # the accelerate options, by ``LAUNCH_FIELDS`` name
    advanced: gr.Accordion
    check: gr.Button
    config_dir: gr.Textbox
    config_name: gr.Textbox
    config_overwrite: gr.Checkbox
    load: gr.Button
    save: gr.Button
    show: gr.Button
    command: gr.Code
    apply: gr.Button
    train: gr.Button

    @property
    def form_inputs(self) -> list[Component]:
        return [self.inputs[k] for k in form.KEYS]

    @property
    def launch_inputs(self) -> list[Component]:
        return list(self.launch.values())

    @property
    def all_inputs(self) -> list[Component]:
        """What ``read_form`` takes, in its order."""
        return self.form_inputs + self.launch_inputs


@dataclass(frozen=True)
class RunTab:
    """The Run tab's buttons and the views the once-a-second refresh fills."""
    train: gr.Button
    stop: gr.Button
    resume: gr.Button
    start_over: gr.Checkbox
    status: gr.HTML
    plot: gr.HTML
    samples_note: gr.Markdown
    gallery: gr.Gallery
    lora_files: gr.Markdown
    log: gr.Code


@dataclass(frozen=True)
class TryTab:
    """The Try it tab's components that events read or write."""
    model: gr.Textbox
    lora: gr.Textbox
    prompt: gr.Textbox
    steps: gr.Slider
    strength: gr.Slider
    seed: gr.Number
    width: gr.Number
    height: gr.Number
    teacher: gr.Checkbox
    teacher_sampler: gr.Radio
    teacher_steps: gr.Slider
    teacher_cfg: gr.Number
    generate: gr.Button
    images: gr.Gallery
    fmt: gr.Radio
    export: gr.Button
    exported: gr.File

    @property
    def generate_inputs(self) -> list[Component]:
        """What ``generate_images`` takes after the sampler, in its order, then the teacher baseline's."""
        return [self.model, self.lora, self.prompt, self.steps, self.strength, self.seed, self.width, self.height,
                self.teacher, self.teacher_sampler, self.teacher_steps, self.teacher_cfg]


@dataclass(frozen=True)
class Feedback:
    """Field notes: ``notes`` is what the last action found, ``shown`` what the page shows; ``show``
    chains the redraw of the fields whose note changed after an event."""
    notes: gr.State
    shown: gr.State
    spots: dict[str, Spot]
    components: dict[str, Component]
    advanced: gr.Accordion
    tabs: gr.Tabs

    def show(self, event: Any) -> None:
        keys = list(self.spots)

        def redraw(notes: dict, shown: dict) -> tuple:
            updates, advanced, tab = render(self.spots, notes, shown)
            return (*[gr.skip() if u is None else u for u in updates],
                    gr.update(open=True) if advanced else gr.skip(),
                    gr.Tabs(selected=tab) if tab else gr.skip(), notes)
        event.then(redraw, [self.notes, self.shown],
                   [*[self.components[k] for k in keys], self.advanced, self.tabs, self.shown],
                   show_progress="hidden", concurrency_id=NOTES_QUEUE).then(None, None, None, js=SCROLL_JS)


def guarded(fn: Callable[..., Any], n_out: int) -> Callable[..., Any]:
    """Run ``fn``; on a user error show it in the first output (the page's message) and leave every other
    output unchanged, so a mistake never clears the form."""
    def run(*args):
        try:
            return fn(*args)
        except USER_ERRORS as err:
            return (_user_error(err), *[gr.skip()] * (n_out - 1)) if n_out > 1 else _user_error(err)
    return run


def checked(fn: Callable[..., Any], n_out: int, spots: Spots, *, refills: bool = False) -> Callable[..., Any]:
    """``guarded`` that also points at the field: the wrapped function takes the field notes first and
    returns them updated last (this part's old errors cleared, the new one marked; every note dropped
    when the action ``refills`` the form, whose values the notes no longer describe)."""
    def run(notes: dict, *args):
        try:
            out = fn(*args)
        except USER_ERRORS as err:
            located = spots.locate(err)
            return (spots.message(err, located), *[gr.skip()] * (n_out - 1), spots.notes_after(notes, located))
        return (*(out if isinstance(out, tuple) else (out,)), {} if refills else spots.notes_after(notes, None))
    return run


def setup_spots(fields: dict[str, form.Field]) -> Spots:
    """Every Setup field, and the labels path and launch messages start with."""
    spots = Spots()
    for f in form.FIELDS:
        advanced = f.key not in MAIN_KEYS
        where = f"Advanced › {f.key.split('.')[0]} › {f.label}" if advanced else f.label
        spots.add(Spot(f.key, where, elem_id(f.key), field_info(f, advanced), "setup", advanced, True))
    for name, label in LAUNCH_FIELDS.items():
        spots.add(Spot(f"launch.{name}", label, f"l-{name}", "", "setup"), label)
    spots.add(Spot("config.dir", "Config folder", "config-dir", "", "setup"), f"{CONFIG_FILE} folder")
    spots.add(Spot("config.name", CONFIG_FILE, "config-name", "", "setup"), CONFIG_FILE)
    for label, key in (("Base model", "model.path"), ("Prompts file", "data.prompts"), ("Output folder", "output.dir"),
                       ("Scorer weights", "mps.scorer_weights"), ("Preference scorer", "mps.scorer")):
        spots.prefixes[label.lower()] = (key,)
    spots.prefixes.update({"gpu ids": ("launch.gpu_ids",), "gpus / processes per machine": ("launch.num_processes",),
                           "machines": ("launch.num_machines",)})
    spots.starts.update({"gpus / processes and machines must": ("launch.num_processes", "launch.num_machines"),
                         "processes is the total": ("launch.num_processes", "launch.num_machines"),
                         "machine rank must": ("launch.machine_rank",),
                         "several machines need": ("launch.main_process_ip",)})
    spots.groups["mlcd/lcd/mps/dm.steps"] = tuple(form.STAGES)          # "nothing to train": every stage toggle
    return spots


def try_spots() -> Spots:
    spots = Spots()
    for key, label, elem, labels in (("try.model", "Base model", "try-model", ("Base model",)),
                                     ("try.lora", "TLCM LoRA", "try-lora", ("LoRA",)),
                                     ("try.prompt", "Prompt", "try-prompt", ("Prompt",)),
                                     ("try.steps", "Steps", "try-steps", ("Steps",)),
                                     ("try.strength", "LoRA strength", "try-strength", ("LoRA strength",)),
                                     ("try.seed", "Seed", "try-seed", ("Seed",)),
                                     ("try.width", "Width", "try-width", ("Width",)),
                                     ("try.height", "Height", "try-height", ("Height",)),
                                     ("try.teacher_steps", "Teacher steps", "try-teacher-steps", ("Teacher steps",)),
                                     ("try.teacher_cfg", "Teacher CFG", "try-teacher-cfg", ("Teacher CFG",))):
        spots.add(Spot(key, label, elem, "", "try"), *labels)
    spots.starts.update({"width must": ("try.width",), "height must": ("try.height",)})
    return spots


def build_setup_tab(values: dict[str, Any], fields: dict[str, form.Field], presets: dict[str, Preset],
                    spots: Spots) -> SetupTab:
    """Preset, the main fields, launch options, every other field under Advanced, config file, command and
    a Train button (the Run tab's)."""
    inputs: dict[str, Component] = {}
    default = next(iter(presets.values()))
    with gr.Tab("Setup", id="setup"):
        with gr.Row():
            preset = gr.Dropdown(list(presets), value=default.name, label="Preset", elem_id="preset", scale=1)
            preset_info = gr.Markdown(_summary(default), elem_id="preset-summary")
        with gr.Group():
            for key in ("model.path", "data.prompts", "output.dir"):
                inputs[key] = _component(fields[key], values[key])
            check = gr.Button("Check paths", size="sm", elem_id="check-paths")
        with gr.Row():
            for toggle, steps_key in form.STAGES.items():
                with gr.Column(min_width=160):
                    inputs[toggle] = _component(fields[toggle], values[toggle])
                    inputs[steps_key] = _component(fields[steps_key], values[steps_key])
        with gr.Row():
            inputs["mps.scorer"] = _component(fields["mps.scorer"], values["mps.scorer"])
            inputs["mps.scorer_weights"] = _component(fields["mps.scorer_weights"], values["mps.scorer_weights"])
        with gr.Row():
            launch = {name: _launch_component(name, label) for name, label in LAUNCH_FIELDS.items()}
        with gr.Row():
            for key in RUN_KEYS:
                inputs[key] = _component(fields[key], values[key])
        inputs["data.sample_prompts"] = _component(fields["data.sample_prompts"], values["data.sample_prompts"])
        with gr.Accordion(advanced_label(f"as the preset “{default.name}” sets them"), open=False,
                          elem_id="advanced") as advanced:
            sections: dict[str, list[form.Field]] = {}
            for f in form.FIELDS:
                if f.key not in MAIN_KEYS:
                    sections.setdefault(f.key.split(".")[0], []).append(f)
            for section, section_fields in sections.items():
                gr.Markdown(f"**{section}**")
                with gr.Row():
                    for f in section_fields:
                        inputs[f.key] = _component(f, values[f.key], advanced=True)
        with gr.Row():
            config_dir = gr.Textbox(label="Config folder (files are read and written only inside it)",
                                    value=str(Path.cwd()), elem_id="config-dir", scale=2)
            config_name = gr.Textbox(label="Config file (.yaml / .toml, as for `python -m tlcm_train --config`)",
                                     value="tlcm-train.yaml", elem_id="config-name", scale=2)
            config_overwrite = gr.Checkbox(False, label="Overwrite an existing file", elem_id="config-overwrite")
            load = gr.Button("Load config", elem_id="load-config")
            save = gr.Button("Save config", elem_id="save-config")
        command = gr.Code(label="Command: what Train runs with the form as it is now (follows every change; "
                                "editable)", language="shell", interactive=True, elem_id="command",
                          value=command_preview([values[k] for k in form.KEYS] +
                                                [getattr(LaunchOptions(), n) for n in LAUNCH_FIELDS], spots))
        gr.Markdown("<small>Train adds `--overwrite` when *Start over* is ticked; *Resume latest* adds "
                    "`--resume latest`.</small>")
        with gr.Row():
            show = gr.Button("Check paths & show command", size="sm", elem_id="show-command")
            apply = gr.Button("Apply the edited command's --set values to the form", size="sm",
                              elem_id="apply-command")
        with gr.Row():
            train = gr.Button("Train", variant="primary", elem_id="setup-train", scale=0, min_width=200)
            gr.Markdown("Starts this run and opens the **Run** tab to watch it (the same as Train there).")
    return SetupTab(preset, preset_info, inputs, launch, advanced, check, config_dir, config_name, config_overwrite,
                    load, save, show, command, apply, train)


def wire_setup(tab: SetupTab, message: gr.Markdown, presets: dict[str, Preset], feedback: Feedback,
               spots: Spots) -> None:
    """Preset, path checks, command, config file: each reads or fills the form and reports in ``message``
    and, for a field, beside it; the command box follows every change of the form."""
    form_inputs, launch_inputs, all_inputs = tab.form_inputs, tab.launch_inputs, tab.all_inputs
    notes = feedback.notes

    def on_preset(name: str) -> tuple:
        chosen = presets[name]
        shown = form.form_values(chosen.values())
        return (f"Preset **{name}** applied.", _summary(chosen), *[shown.get(k, gr.skip()) for k in form.KEYS],
                *[getattr(chosen.launch, n) for n in LAUNCH_FIELDS],
                gr.update(label=advanced_label(f"as the preset “{name}” left them"), open=False), {})

    def on_check(*args: Any) -> str:
        config, _ = read_form(args)
        _, count = check_prompt_files(config.data.prompts)
        scorer = (f" · {config.mps.scorer} scorer {config.mps.scorer_weights}"
                  if "mps" in needed_techniques(config) else "")
        return f"Paths OK: model {config.model.path} · {count} prompts{scorer} · output {config.output.dir}"

    def on_show(*args: Any) -> tuple[str, str]:
        config, launch = read_form(args)
        return "The command is below.", show_command(config, launch)

    def live_command(*args: Any) -> str:
        return command_preview(args, spots)

    def on_apply(text: str) -> tuple:
        overrides, _ = parse_command(text)
        shown = form.to_form(load_config(None, overrides))
        return ("Form updated from the command (accelerate flags are set in the fields above).",
                *[shown[k] for k in form.KEYS], gr.update(label=advanced_label("as the edited command sets them")), {})

    def on_save(folder: str, name: str, overwrite: bool, *args: Any) -> tuple[str, bool]:
        return save_config_file(read_form(args)[0], folder, name, overwrite), False

    def on_load(folder: str, name: str) -> tuple:
        shown = form.to_form(load_config_file(folder, name))
        return (f"Loaded {name}", *[shown[k] for k in form.KEYS],
                gr.update(label=advanced_label(f"as loaded from {name}")))

    def path_check(key: str, describe: Callable[[str], str]) -> Callable[[dict, str], dict]:
        """A blur check of one path field: its note is replaced, every other note kept (unmarked)."""
        def run(current: dict, value: str) -> dict:
            kept = {k: (kind, text, False) for k, (kind, text, _) in (current or {}).items() if k != key}
            if not str(value or "").strip():
                return kept
            try:
                kept[key] = (OK, describe(value), False)
            except USER_ERRORS as err:
                located = spots.locate(err)
                kept[key] = (ERROR, located.text if located else str(err), True)
            return kept
        return run

    queued = dict(concurrency_id=NOTES_QUEUE)
    preset_out = [message, tab.preset_info, *form_inputs, *launch_inputs, tab.advanced, notes]
    feedback.show(tab.preset.change(guarded(on_preset, len(preset_out)), tab.preset, preset_out, **queued))
    feedback.show(tab.check.click(checked(on_check, 1, spots), [notes, *all_inputs], [message, notes], **queued))
    feedback.show(tab.show.click(checked(on_show, 2, spots), [notes, *all_inputs], [message, tab.command, notes],
                                 **queued))
    apply_out = [message, *form_inputs, tab.advanced, notes]
    feedback.show(tab.apply.click(guarded(on_apply, len(apply_out)), tab.command, apply_out, **queued))
    feedback.show(tab.save.click(checked(on_save, 2, spots),
                                 [notes, tab.config_dir, tab.config_name, tab.config_overwrite, *all_inputs],
                                 [message, tab.config_overwrite, notes], concurrency_id=NOTES_QUEUE))
    feedback.show(tab.load.click(checked(on_load, len(apply_out) - 1, spots, refills=True),
                                 [notes, tab.config_dir, tab.config_name], apply_out, concurrency_id=NOTES_QUEUE))
    gr.on([c.change for c in all_inputs], live_command, all_inputs, tab.command, trigger_mode="always_last",
          show_progress="hidden")
    for key, describe in (("model.path", model_note), ("data.prompts", prompts_note), ("output.dir", output_note)):
        box = tab.inputs[key]
        feedback.show(box.blur(path_check(key, describe), [notes, box], notes, show_progress="hidden",
                               concurrency_id=NOTES_QUEUE))


def build_run_tab() -> RunTab:
    """Train / Stop / Resume, and the run's state, loss curves, sample grids, LoRA files and log."""
    with gr.Tab("Run", id="run"):
        with gr.Row():
            train = gr.Button("Train", variant="primary", elem_id="train")
            stop = gr.Button("Stop (save & exit)", variant="stop", elem_id="stop", interactive=False)
            resume = gr.Button("Resume latest", elem_id="resume", interactive=False)
            start_over = gr.Checkbox(False, label="Start over: Train replaces the earlier run in this folder",
                                     elem_id="start-over")
        status = gr.HTML(elem_id="status")
        plot = gr.HTML(loss_svg([]), label="Loss per stage")
        samples_note = gr.Markdown(elem_id="samples-note")
        gallery = gr.Gallery(label="Sample grids (each labelled with its training step and sampling steps)",
                             columns=2, height=520, object_fit="contain", elem_id="samples")
        lora_files = gr.Markdown(elem_id="lora-files")
        log = gr.Code(label="Log (last lines)", language=None, elem_id="log", max_lines=40)
    return RunTab(train, stop, resume, start_over, status, plot, samples_note, gallery, lora_files, log)


def _sampling_plan(view: RunView, every: Any, steps: Any, prompts: Any) -> tuple[int, tuple[int, ...], int]:
    """(sample every, sample steps, sample prompts) of the run's config snapshot, else of the form."""
    if view.config is not None:
        out = view.config.output
        return out.sample_every, tuple(out.sample_steps), len(view.config.data.sample_prompts)
    try:
        numbers = tuple(int(s) for s in str(steps or "").split(",") if s.strip())
        return int(every or 0), numbers, len([p for p in str(prompts or "").splitlines() if p.strip()])
    except (TypeError, ValueError):
        return 0, (), 0


def wire_run(tab: RunTab, setup: SetupTab, message: gr.Markdown, manager: JobManager, *, timer: gr.Timer,
             samples_seen: gr.State, lora_offered: gr.State, try_lora: gr.Textbox, feedback: Feedback,
             spots: Spots) -> None:
    """Start (from here or Setup), resume and stop runs of the form's config, and redraw the run in
    ``setup``'s output folder on every ``timer`` tick, read from that folder so a reloaded page shows it
    too. ``samples_seen`` keeps the gallery from redrawing unchanged pictures; ``lora_offered`` is the
    trained LoRA last put into ``try_lora``, so a path the user typed there is never overwritten."""
    all_inputs, output_dir, notes = setup.all_inputs, setup.inputs["output.dir"], feedback.notes
    gpu = GpuWatch()

    def on_train(overwrite: bool, *args: Any) -> tuple[str, bool]:
        config, launch = read_form(args)
        info = manager.start(config, launch, overwrite=overwrite)
        return started(info, "Started over" if overwrite else "Started"), False

    def on_setup_train(overwrite: bool, *args: Any) -> tuple:
        """Train from Setup, then the Run tab; a refusal that is about the folder (resume or start over,
        both on the Run tab) opens it too."""
        try:
            return (*on_train(overwrite, *args), gr.Tabs(selected="run"))
        except JobError as err:
            return _user_error(err), gr.skip(), gr.Tabs(selected="run")

    def on_resume(*args: Any) -> str:
        config, launch = read_form(args)
        return started(manager.start(config, launch, resume=True), "Resumed")

    def on_stop(folder: str) -> str:
        return manager.stop(check_output_dir(folder))

    def refresh(folder: str, seen: tuple, offered: str, every: Any, steps: Any, prompts: Any) -> tuple:
        try:
            root = check_output_dir(folder)
        except PathError as err:
            return (f"<div id='run-state' data-state='idle'>{html.escape(str(err))}</div>", gr.skip(), gr.skip(),
                    "", "",
                    gr.update(interactive=False), gr.update(interactive=False), gr.update(interactive=False),
                    seen, gr.skip(), offered, "")
        info = manager.info(root)
        view = read_run(info)
        resumable = not view.active and has_checkpoint(root)        # then Resume is the offer, not Train
        every, sample_steps, sample_prompts = _sampling_plan(view, every, steps, prompts)
        shown = (tuple(str(p) for p in view.samples), sample_steps, sample_prompts)
        pictures = ([labelled(p, sample_steps, sample_prompts) for p in reversed(view.samples)]
                    if shown != seen else gr.skip())
        trained = str(view.lora_files.get("kohya") or next(iter(view.lora_files.values()), ""))
        lora_md = "".join(f"- **{fmt}**: `{path}`\n" for fmt, path in view.lora_files.items())
        reading = (gpu.reading((str(root), info.record.pid), manager.process_ids(info), view.active)
                   if info.record else None)
        return (status_html(view, root, memory_text(reading, view.active)), loss_svg(view.losses), pictures,
                "\n".join(view.log_tail),
                ("**LoRA files**\n" + lora_md) if lora_md else "",
                gr.update(interactive=not view.active, variant="secondary" if resumable else "primary"),
                gr.update(interactive=view.active),
                gr.update(interactive=resumable, variant="primary" if resumable else "secondary"), shown,
                trained if trained and trained != offered else gr.skip(), trained,
                note(bool(view.samples), every, sample_steps, view.step, view.total, sample_prompts))

    feedback.show(tab.train.click(checked(on_train, 2, spots), [notes, tab.start_over, *all_inputs],
                                  [message, tab.start_over, notes], concurrency_id=NOTES_QUEUE))
    feedback.show(setup.train.click(checked(on_setup_train, 3, spots), [notes, tab.start_over, *all_inputs],
                                    [message, tab.start_over, feedback.tabs, notes], concurrency_id=NOTES_QUEUE))
    feedback.show(tab.resume.click(checked(on_resume, 1, spots), [notes, *all_inputs], [message, notes],
                                   concurrency_id=NOTES_QUEUE))
    tab.stop.click(guarded(on_stop, 1), output_dir, [message])
    run_outputs = [tab.status, tab.plot, tab.gallery, tab.log, tab.lora_files, tab.train, tab.stop, tab.resume,
                   samples_seen, try_lora, lora_offered, tab.samples_note]
    plan = [setup.inputs[k] for k in ("output.sample_every", "output.sample_steps", "data.sample_prompts")]
    timer.tick(refresh, [output_dir, samples_seen, lora_offered, *plan], run_outputs, show_progress="hidden")


def wire_reattach(demo: gr.Blocks, setup: SetupTab, manager: JobManager) -> None:
    """On every page load, point the form at the run this app started last, so a reloaded page watches it."""
    def on_load_page() -> tuple:
        """After a reload: point the form at the run this app started last and show its config."""
        if manager.latest is None:
            return (gr.skip(),) * (len(form.KEYS) + 1)
        snapshot = manager.latest / "config.yaml"
        try:
            shown = form.to_form(load_config(snapshot))
        except (ConfigError, FileNotFoundError):     # not written yet: the trainer is still loading
            shown = {}
        shown["output.dir"] = str(manager.latest)
        label = gr.update(label=advanced_label("as the watched run's config.yaml sets them")) if len(shown) > 1 \
            else gr.skip()
        return (*[shown.get(k, gr.skip()) for k in form.KEYS], label)

    demo.load(on_load_page, None, [*setup.form_inputs, setup.advanced])


def build_try_tab(values: dict[str, Any]) -> TryTab:
    """Generate with a LoRA at the core's step range beside the teacher baseline, and export it; starts from
    the form's model, first sample prompt, resolution and distillation CFG."""
    with gr.Tab("Try it", id="try"):
        with gr.Row():
            model = gr.Textbox(label="Base model", value=values["model.path"], elem_id="try-model")
            lora = gr.Textbox(label="TLCM LoRA (.safetensors or PEFT folder)", elem_id="try-lora")
        with gr.Row():
            prompt = gr.Textbox(label="Prompt", value=(values["data.sample_prompts"].splitlines() or [""])[0],
                                elem_id="try-prompt", scale=3)
            steps = gr.Slider(MIN_STEPS, MAX_STEPS, value=DEFAULT_STEPS, step=1, label="Steps",
                              info=STEP_RANGE_TEXT, elem_id="try-steps")
            strength = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="LoRA strength", elem_id="try-strength")
        with gr.Row():
            seed = gr.Number(0, precision=None, label="Seed", elem_id="try-seed")
            width = gr.Number(values["train.resolution"], precision=None, label="Width", elem_id="try-width")
            height = gr.Number(values["train.resolution"], precision=None, label="Height", elem_id="try-height")
        with gr.Row():
            teacher = gr.Checkbox(False, label="Teacher baseline", elem_id="try-teacher",
                                  info="also the base model without the LoRA, same prompt, seed and size, sampled "
                                       "the usual way (the same loaded model with the LoRA taken out; the next "
                                       "LoRA image merges it back)")
            teacher_sampler = gr.Radio(list(TEACHER_SAMPLERS), value=TEACHER_SAMPLERS[0], label="Teacher sampler",
                                       elem_id="try-teacher-sampler")
            teacher_steps = gr.Slider(1, MAX_TEACHER_STEPS, value=TEACHER_STEPS, step=1, label="Teacher steps",
                                      elem_id="try-teacher-steps")
            teacher_cfg = gr.Number(values["distill.guidance_scale"], precision=None, minimum=1, maximum=MAX_GUIDANCE,
                                    label="Teacher CFG", info="default: the CFG the LoRA was distilled from",
                                    elem_id="try-teacher-cfg")
        generate = gr.Button("Generate", variant="primary", elem_id="generate")
        images = gr.Gallery(label="Generated (LoRA first, then the teacher baseline when ticked)", columns=2,
                            height=360, object_fit="contain", elem_id="generated")
        with gr.Row():
            fmt = gr.Radio(list(FORMATS), value="kohya", label="Export format")
            export_btn = gr.Button("Export", elem_id="export")
        exported = gr.File(label="Exported LoRA", elem_id="exported")
    return TryTab(model, lora, prompt, steps, strength, seed, width, height, teacher, teacher_sampler, teacher_steps,
                  teacher_cfg, generate, images, fmt, export_btn, exported)


def wire_try(tab: TryTab, message: gr.Markdown, sampler: Sampler, feedback: Feedback, spots: Spots) -> None:
    """Generate (the LoRA, then the teacher baseline when ticked) and Export; ``sampler`` keeps the loaded
    pipelines between presses; Export keeps only its latest file, in a temporary folder removed with the app."""
    exports = Exports()
    def on_generate(model: str, lora: str, prompt: str, steps: Any, strength: Any, seed: Any, width: Any,
                    height: Any, teacher: bool, name: str, teacher_steps: Any, cfg: Any) -> tuple[str, list]:
        images = generate_images(sampler, model, lora, prompt, steps, strength, seed, width, height)
        shown = [(image, f"TLCM LoRA · {int(float(steps))} steps · strength {float(strength):g}") for image in images]
        if not teacher:
            return "Generated.", shown
        baseline = teacher_images(sampler, model, prompt, seed, width, height, name, teacher_steps, cfg)
        shown += [(image, f"teacher baseline (no LoRA) · {name} {int(float(teacher_steps))} steps · "
                          f"CFG {float(cfg):g}") for image in baseline]
        return "Generated: the LoRA, then the teacher baseline (same prompt and seed).", shown

    def on_export(lora: str, chosen: str) -> tuple[str, str]:
        path = exports.export(lora, chosen)
        return f"Exported as {chosen}: {path.name}", str(path)

    feedback.show(tab.generate.click(checked(on_generate, 2, spots), [feedback.notes, *tab.generate_inputs],
                                     [message, tab.images, feedback.notes]))
    feedback.show(tab.export.click(checked(on_export, 2, spots), [feedback.notes, tab.lora, tab.fmt],
                                   [message, tab.exported, feedback.notes], concurrency_limit=1))


def wire_try_follows_form(setup: SetupTab, tab: TryTab) -> None:
    """Try it's base model, size and teacher CFG follow the form's whenever those change there, so a trained
    LoRA is tried on the model and resolution it was trained for, beside its teacher at the distillation's
    CFG; the user may still edit them in Try it."""
    setup.inputs["model.path"].change(lambda v: v, setup.inputs["model.path"], tab.model)
    setup.inputs["train.resolution"].change(lambda v: (v, v), setup.inputs["train.resolution"],
                                            [tab.width, tab.height])
    setup.inputs["distill.guidance_scale"].change(lambda v: v, setup.inputs["distill.guidance_scale"], tab.teacher_cfg)


def build_app(manager: JobManager | None = None, sampler: Sampler | None = None, banner: str = "",
              presets: dict[str, Preset] | None = None) -> gr.Blocks:
    """The whole UI; ``banner`` is shown in red on every page (e.g. "exposed without a password");
    ``presets`` (name → preset, the first is the default) are the GPU presets unless given."""
    manager = manager or JobManager()
    sampler, presets = sampler or Sampler(gpu_busy=manager.active_run), presets or GPU_PRESETS
    values, preset_note = _initial_form(next(iter(presets.values())))
    fields = {f.key: f for f in form.FIELDS}
    with gr.Blocks(title="TLCM trainer") as demo:
        gr.Markdown(HEADER)
        if banner:
            gr.HTML(f"<div class='tlcm-danger' id='exposed-banner'>{banner}</div>")
        message = gr.Markdown(preset_note, elem_id="message")
        on_setup, on_try = setup_spots(fields), try_spots()
        with gr.Tabs(elem_id="tabs") as tabs:
            setup = build_setup_tab(values, fields, presets, on_setup)
            run = build_run_tab()
            try_it = build_try_tab(values)
        gr.Markdown(FOOTER, elem_id="footer")
        timer = gr.Timer(1.0)
        samples_seen = gr.State(())
        lora_offered = gr.State("")
        try_fields = {"try.model": try_it.model, "try.lora": try_it.lora, "try.prompt": try_it.prompt,
                      "try.steps": try_it.steps, "try.strength": try_it.strength, "try.seed": try_it.seed,
                      "try.width": try_it.width, "try.height": try_it.height, "try.teacher_steps": try_it.teacher_steps,
                      "try.teacher_cfg": try_it.teacher_cfg}
        components = {**setup.inputs, **{f"launch.{n}": c for n, c in setup.launch.items()},
                      "config.dir": setup.config_dir, "config.name": setup.config_name, **try_fields}
        feedback = Feedback(gr.State({}), gr.State({}), {**on_setup.spots, **on_try.spots}, components, setup.advanced,
                            tabs)
        wire_setup(setup, message, presets, feedback, on_setup)
        wire_run(run, setup, message, manager, timer=timer, samples_seen=samples_seen, lora_offered=lora_offered,
                 try_lora=try_it.lora, feedback=feedback, spots=on_setup)
        wire_try(try_it, message, sampler, feedback, on_try)
        wire_reattach(demo, setup, manager)
        wire_try_follows_form(setup, try_it)
    return demo
