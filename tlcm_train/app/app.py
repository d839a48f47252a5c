"""The Gradio layout: Setup (form → config → command), Run (launch, watch, stop, resume), Try it.

Thin by design: the form is derived from the trainer's config (``form``), the command is the CLI's
(``commands``), runs are subprocesses (``jobs``) read back from their folder (``progress``), and
generation/export is the core's (``try_it``). Every handler turns bad input, a value beyond the app's
limits (``limits``) included, into a message on the page and leaves the form as it was. Files are
written only where the user pointed, never over an existing one unconfirmed: a config inside the chosen
folder with "Overwrite" ticked, a fresh run over an earlier one with "Start over" ticked.

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
from PIL import Image

from tlcm.files import atomic_write_text
from tlcm.lora import FORMATS
from tlcm.schedules import DEFAULT_STEPS, MAX_STEPS, MIN_STEPS, STEP_RANGE_TEXT
from tlcm_train.config import Config, ConfigError, load_config
from tlcm_train.stage_techniques import needed as needed_techniques

from . import form
from .commands import LaunchOptions, copy_config, parse_command, show_command
from .jobs import JobError, JobInfo, JobManager, has_checkpoint
from .limits import check_whole
from .plot import loss_svg
from .paths import (PathError, check_config_file, check_model, check_output_dir, check_prompt_files,
                    check_scorer_weights, file_in_folder)
from .presets import GPU_PRESETS, Preset
from .progress import RunView, read_run
from .try_it import Sampler, export, generate_images

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
CSS = ".tlcm-danger {background:#b91c1c; color:white; padding:8px 12px; border-radius:6px; font-weight:bold}"


def _component(field: form.Field, value: Any) -> gr.components.Component:
    kwargs = dict(label=field.label, info=field.info or None, value=value, elem_id=f"f-{field.key.replace('.', '-')}")
    if field.kind == "bool":
        return gr.Checkbox(**kwargs)
    if field.kind in ("int", "float"):
        return gr.Number(precision=0 if field.kind == "int" else None, **kwargs)
    if field.kind == "choice":
        return gr.Dropdown(choices=list(field.choices), **kwargs)
    return gr.Textbox(lines=3 if field.kind == "lines" else 1, max_lines=20, **kwargs)


def _launch_component(name: str, label: str) -> gr.components.Component:
    value = getattr(LaunchOptions(), name)
    if isinstance(value, str):
        return gr.Textbox(label=label, value=value, elem_id=f"l-{name}")
    return gr.Number(label=label, value=value, precision=0, elem_id=f"l-{name}")


def _picture(path: Path) -> tuple[Image.Image, str]:
    """A sample grid in memory (Gradio may only serve its own copies) with its step as caption."""
    with Image.open(path) as image:
        return image.copy(), f"step {int(path.stem.split('-')[1])}"


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


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else (f"{minutes}m {secs:02d}s" if minutes else f"{secs}s")


def status_html(view: RunView, folder: Path | None) -> str:
    """State line with a progress bar; the reason and hint for a failed run."""
    fraction = view.step / view.total if view.total else 0.0
    speed = f"{view.it_per_s:.2f} it/s" if view.it_per_s else "– it/s"
    text = (f"<div id='run-state' data-state='{view.state}'><b>{view.state.upper()}</b> · step "
            f"<span id='run-step'>{view.step}</span>/{view.total or '?'} · {speed} · ETA {_duration(view.eta_s)}"
            f"<br><progress max='1' value='{fraction:.4f}' style='width:100%'></progress></div>")
    if view.reason:
        text += (f"<div class='tlcm-danger' id='run-reason'>Run failed: {html.escape(view.reason)}"
                 "</div><small>The last log lines are below; fix the setting they name and press Train or "
                 "Resume latest.</small>")
    if folder is not None:
        text += f"<small>output folder: {html.escape(str(folder))}</small>"
    return text


def read_form(args: tuple | list) -> tuple[Config, LaunchOptions]:
    """The validated config with absolute, checked paths, and the launch options, from the form's values
    (``form.KEYS`` order, then ``LAUNCH_FIELDS``). The scorer weights are checked only while stages 3-4 use
    them, so a stale path in a switched-off stage never blocks a run."""
    config = form.from_form(dict(zip(form.KEYS, args[:len(form.KEYS)])))
    numbers = {n for n, v in vars(LaunchOptions()).items() if isinstance(v, int)}     # the largest is a port
    launch = LaunchOptions(**{n: check_whole(LAUNCH_FIELDS[n], v, 0, 65535) if n in numbers else str(v or "")
                              for n, v in zip(LAUNCH_FIELDS, args[len(form.KEYS):])}).validate()
    prompts, _ = check_prompt_files(config.data.prompts)
    scorer = config.mps.scorer_weights
    if "mps" in needed_techniques(config):           # stages 3-4 run with the preference term
        scorer = str(check_scorer_weights(scorer, config.mps.scorer))
    return copy_config(config, model={"path": str(check_model(config.model.path))},
                       data={"prompts": [str(p) for p in prompts]}, mps={"scorer_weights": scorer},
                       output={"dir": str(check_output_dir(config.output.dir))}), launch


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


Component = gr.components.Component


@dataclass(frozen=True)
class SetupTab:
    """The Setup tab's components that events read or write."""
    preset: gr.Dropdown
    preset_info: gr.Markdown
    inputs: dict[str, Component]            # every config field, by ``form.KEYS`` key
    launch: dict[str, Component]            # the accelerate options, by ``LAUNCH_FIELDS`` name
    check: gr.Button
    config_dir: gr.Textbox
    config_name: gr.Textbox
    config_overwrite: gr.Checkbox
    load: gr.Button
    save: gr.Button
    show: gr.Button
    command: gr.Code
    apply: gr.Button

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
    generate: gr.Button
    images: gr.Gallery
    fmt: gr.Radio
    export: gr.Button
    exported: gr.File

    @property
    def generate_inputs(self) -> list[Component]:
        """What ``generate_images`` takes after the sampler, in its order."""
        return [self.model, self.lora, self.prompt, self.steps, self.strength, self.seed, self.width, self.height]


def guarded(fn: Callable[..., Any], n_out: int) -> Callable[..., Any]:
    """Run ``fn``; on a user error show it in the first output (the page's message) and leave every other
    output unchanged, so a mistake never clears the form."""
    def run(*args):
        try:
            return fn(*args)
        except USER_ERRORS as err:
            return (_user_error(err), *[gr.skip()] * (n_out - 1)) if n_out > 1 else _user_error(err)
    return run


def build_setup_tab(values: dict[str, Any], fields: dict[str, form.Field], presets: dict[str, Preset]) -> SetupTab:
    """Preset, the main fields, launch options, every other field under Advanced, config file and command."""
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
        with gr.Accordion("Advanced: every hyperparameter (paper defaults)", open=False):
            sections: dict[str, list[form.Field]] = {}
            for f in form.FIELDS:
                if f.key not in MAIN_KEYS:
                    sections.setdefault(f.key.split(".")[0], []).append(f)
            for section, section_fields in sections.items():
                gr.Markdown(f"**{section}**")
                with gr.Row():
                    for f in section_fields:
                        inputs[f.key] = _component(f, values[f.key])
        with gr.Row():
            config_dir = gr.Textbox(label="Config folder (files are read and written only inside it)",
                                    value=str(Path.cwd()), elem_id="config-dir", scale=2)
            config_name = gr.Textbox(label="Config file (.yaml / .toml, as for `python -m tlcm_train --config`)",
                                     value="tlcm-train.yaml", elem_id="config-name", scale=2)
            config_overwrite = gr.Checkbox(False, label="Overwrite an existing file", elem_id="config-overwrite")
            load = gr.Button("Load config", elem_id="load-config")
            save = gr.Button("Save config", elem_id="save-config")
        show = gr.Button("Show command", elem_id="show-command")
        command = gr.Code(label="Command (what Train runs; editable)", language="shell", interactive=True,
                          elem_id="command")
        apply = gr.Button("Apply the edited command's --set values to the form", size="sm",
                          elem_id="apply-command")
    return SetupTab(preset, preset_info, inputs, launch, check, config_dir, config_name, config_overwrite, load,
                    save, show, command, apply)


def wire_setup(tab: SetupTab, message: gr.Markdown, presets: dict[str, Preset]) -> None:
    """Preset, path check, command, config file: each reads or fills the form and reports in ``message``."""
    form_inputs, launch_inputs, all_inputs = tab.form_inputs, tab.launch_inputs, tab.all_inputs

    def on_preset(name: str) -> tuple:
        chosen = presets[name]
        shown = form.form_values(chosen.values())
        return (f"Preset **{name}** applied.", _summary(chosen), *[shown.get(k, gr.skip()) for k in form.KEYS],
                *[getattr(chosen.launch, n) for n in LAUNCH_FIELDS])

    def on_check(*args: Any) -> str:
        config, _ = read_form(args)
        _, count = check_prompt_files(config.data.prompts)
        scorer = (f" · {config.mps.scorer} scorer {config.mps.scorer_weights}"
                  if "mps" in needed_techniques(config) else "")
        return f"Paths OK: model {config.model.path} · {count} prompts{scorer} · output {config.output.dir}"

    def on_show(*args: Any) -> tuple[str, str]:
        config, launch = read_form(args)
        return "The command is below.", show_command(config, launch)

    def on_apply(text: str) -> tuple:
        overrides, _ = parse_command(text)
        shown = form.to_form(load_config(None, overrides))
        return ("Form updated from the command (accelerate flags are set in the fields above).",
                *[shown[k] for k in form.KEYS])

    def on_save(folder: str, name: str, overwrite: bool, *args: Any) -> tuple[str, bool]:
        return save_config_file(read_form(args)[0], folder, name, overwrite), False

    def on_load(folder: str, name: str) -> tuple:
        shown = form.to_form(load_config_file(folder, name))
        return (f"Loaded {name}", *[shown[k] for k in form.KEYS])

    tab.preset.change(guarded(on_preset, 2 + len(form_inputs) + len(launch_inputs)), tab.preset,
                      [message, tab.preset_info, *form_inputs, *launch_inputs])
    tab.check.click(guarded(on_check, 1), all_inputs, [message])
    tab.show.click(guarded(on_show, 2), all_inputs, [message, tab.command])
    tab.apply.click(guarded(on_apply, 1 + len(form_inputs)), tab.command, [message, *form_inputs])
    tab.save.click(guarded(on_save, 2), [tab.config_dir, tab.config_name, tab.config_overwrite, *all_inputs],
                   [message, tab.config_overwrite])
    tab.load.click(guarded(on_load, 1 + len(form_inputs)), [tab.config_dir, tab.config_name],
                   [message, *form_inputs])


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
        gallery = gr.Gallery(label="Samples (rows: prompts; columns: the sample steps)", columns=4, height=360,
                             elem_id="samples")
        lora_files = gr.Markdown(elem_id="lora-files")
        log = gr.Code(label="Log (last lines)", language=None, elem_id="log", max_lines=40)
    return RunTab(train, stop, resume, start_over, status, plot, gallery, lora_files, log)


def wire_run(tab: RunTab, setup: SetupTab, message: gr.Markdown, manager: JobManager, *, timer: gr.Timer,
             samples_seen: gr.State, lora_offered: gr.State, try_lora: gr.Textbox) -> None:
    """Start, resume and stop runs of the form's config, and redraw the run in ``setup``'s output folder on
    every ``timer`` tick, read from that folder so a reloaded page shows it too. ``samples_seen`` keeps the
    gallery from redrawing unchanged pictures; ``lora_offered`` is the trained LoRA last put into
    ``try_lora``, so a path the user typed there is never overwritten."""
    all_inputs, output_dir = setup.all_inputs, setup.inputs["output.dir"]

    def on_train(overwrite: bool, *args: Any) -> tuple[str, bool]:
        config, launch = read_form(args)
        info = manager.start(config, launch, overwrite=overwrite)
        return started(info, "Started over" if overwrite else "Started"), False

    def on_resume(*args: Any) -> str:
        config, launch = read_form(args)
        return started(manager.start(config, launch, resume=True), "Resumed")

    def on_stop(folder: str) -> str:
        return manager.stop(check_output_dir(folder))

    def refresh(folder: str, seen: tuple, offered: str) -> tuple:
        try:
            root = check_output_dir(folder)
        except PathError as err:
            return (f"<div id='run-state' data-state='idle'>{html.escape(str(err))}</div>", gr.skip(), gr.skip(),
                    "", "",
                    gr.update(interactive=False), gr.update(interactive=False), gr.update(interactive=False),
                    seen, gr.skip(), offered)
        view = read_run(manager.info(root))
        resumable = not view.active and has_checkpoint(root)        # then Resume is the offer, not Train
        names = tuple(str(p) for p in view.samples)
        pictures = [_picture(p) for p in view.samples] if names != seen else gr.skip()
        trained = str(view.lora_files.get("kohya") or next(iter(view.lora_files.values()), ""))
        lora_md = "".join(f"- **{fmt}**: `{path}`\n" for fmt, path in view.lora_files.items())
        return (status_html(view, root), loss_svg(view.losses), pictures,
                "\n".join(view.log_tail),
                ("**LoRA files**\n" + lora_md) if lora_md else "",
                gr.update(interactive=not view.active, variant="secondary" if resumable else "primary"),
                gr.update(interactive=view.active),
                gr.update(interactive=resumable, variant="primary" if resumable else "secondary"), names,
                trained if trained and trained != offered else gr.skip(), trained)

    tab.train.click(guarded(on_train, 2), [tab.start_over, *all_inputs], [message, tab.start_over])
    tab.resume.click(guarded(on_resume, 1), all_inputs, [message])
    tab.stop.click(guarded(on_stop, 1), output_dir, [message])
    run_outputs = [tab.status, tab.plot, tab.gallery, tab.log, tab.lora_files, tab.train, tab.stop, tab.resume,
                   samples_seen, try_lora, lora_offered]
    timer.tick(refresh, [output_dir, samples_seen, lora_offered], run_outputs, show_progress="hidden")


def wire_reattach(demo: gr.Blocks, setup: SetupTab, manager: JobManager) -> None:
    """On every page load, point the form at the run this app started last, so a reloaded page watches it."""
    def on_load_page() -> tuple:
        """After a reload: point the form at the run this app started last and show its config."""
        if manager.latest is None:
            return (gr.skip(),) * len(form.KEYS)
        snapshot = manager.latest / "config.yaml"
        try:
            shown = form.to_form(load_config(snapshot))
        except (ConfigError, FileNotFoundError):     # not written yet: the trainer is still loading
            shown = {}
        shown["output.dir"] = str(manager.latest)
        return tuple(shown.get(k, gr.skip()) for k in form.KEYS)

    demo.load(on_load_page, None, setup.form_inputs)


def build_try_tab(values: dict[str, Any]) -> TryTab:
    """Generate with a LoRA at the core's step range, and export it; starts from the form's model, first
    sample prompt and resolution."""
    with gr.Tab("Try it", id="try"):
        with gr.Row():
            model = gr.Textbox(label="Base model", value=values["model.path"], elem_id="try-model")
            lora = gr.Textbox(label="TLCM LoRA (.safetensors or PEFT folder)", elem_id="try-lora")
        with gr.Row():
            prompt = gr.Textbox(label="Prompt", value=(values["data.sample_prompts"].splitlines() or [""])[0],
                                elem_id="try-prompt", scale=3)
            steps = gr.Slider(MIN_STEPS, MAX_STEPS, value=DEFAULT_STEPS, step=1, label="Steps",
                              info=STEP_RANGE_TEXT, elem_id="try-steps")
            strength = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="LoRA strength")
        with gr.Row():
            seed = gr.Number(0, precision=0, label="Seed", elem_id="try-seed")
            width = gr.Number(values["train.resolution"], precision=0, label="Width", elem_id="try-width")
            height = gr.Number(values["train.resolution"], precision=0, label="Height", elem_id="try-height")
        generate = gr.Button("Generate", variant="primary", elem_id="generate")
        images = gr.Gallery(label="Generated", columns=4, height=360, elem_id="generated")
        with gr.Row():
            fmt = gr.Radio(list(FORMATS), value="kohya", label="Export format")
            export_btn = gr.Button("Export", elem_id="export")
        exported = gr.File(label="Exported LoRA", elem_id="exported")
    return TryTab(model, lora, prompt, steps, strength, seed, width, height, generate, images, fmt, export_btn,
                  exported)


def wire_try(tab: TryTab, message: gr.Markdown, sampler: Sampler) -> None:
    """Generate and Export; ``sampler`` keeps the loaded pipeline between presses."""
    def on_generate(*fields: Any) -> tuple[str, list]:
        return "Generated.", generate_images(sampler, *fields)

    def on_export(lora: str, chosen: str) -> tuple[str, str]:
        path = export(lora, chosen)
        return f"Exported as {chosen}: {path.name}", str(path)

    tab.generate.click(guarded(on_generate, 2), tab.generate_inputs, [message, tab.images])
    tab.export.click(guarded(on_export, 2), [tab.lora, tab.fmt], [message, tab.exported])


def wire_try_follows_form(setup: SetupTab, tab: TryTab) -> None:
    """Try it's base model and size follow the form's whenever those change there, so a trained LoRA is
    tried on the model and resolution it was trained for; the user may still edit them in Try it."""
    setup.inputs["model.path"].change(lambda v: v, setup.inputs["model.path"], tab.model)
    setup.inputs["train.resolution"].change(lambda v: (v, v), setup.inputs["train.resolution"],
                                            [tab.width, tab.height])


def build_app(manager: JobManager | None = None, sampler: Sampler | None = None, banner: str = "",
              presets: dict[str, Preset] | None = None) -> gr.Blocks:
    """The whole UI; ``banner`` is shown in red on every page (e.g. "exposed without a password");
    ``presets`` (name → preset, the first is the default) are the GPU presets unless given."""
    manager, sampler, presets = manager or JobManager(), sampler or Sampler(), presets or GPU_PRESETS
    values, preset_note = _initial_form(next(iter(presets.values())))
    with gr.Blocks(title="TLCM trainer") as demo:
        gr.Markdown(HEADER)
        if banner:
            gr.HTML(f"<div class='tlcm-danger' id='exposed-banner'>{banner}</div>")
        message = gr.Markdown(preset_note, elem_id="message")
        setup = build_setup_tab(values, {f.key: f for f in form.FIELDS}, presets)
        run = build_run_tab()
        try_it = build_try_tab(values)
        timer = gr.Timer(1.0)
        samples_seen = gr.State(())
        lora_offered = gr.State("")
        # Registration order fixes each event's API name (run, run_1, ...): keep it.
        wire_setup(setup, message, presets)
        wire_run(run, setup, message, manager, timer=timer, samples_seen=samples_seen, lora_offered=lora_offered,
                 try_lora=try_it.lora)
        wire_try(try_it, message, sampler)
        wire_reattach(demo, setup, manager)
        wire_try_follows_form(setup, try_it)
    return demo
