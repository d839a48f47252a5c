"""Registration of the TLCM sampler/scheduler in the stand-in WebUI (A1111 1.10 surfaces, Forge's add_sampler)."""
import json
import subprocess
import sys

import pytest

from webui_stub.harness import REPO, SHIM, load_extension, purge, start_webui


@pytest.fixture
def webui(monkeypatch):
    yield start_webui(monkeypatch)
    purge()


def names(items):
    return [x.name for x in items]


def test_registers_once_and_survives_reload_ui(webui):
    first = load_extension(webui)
    second = load_extension(webui)                       # "Reload UI": the script file runs again
    assert [c.__name__ for c in first] == [c.__name__ for c in second] == ["TLCMScript"]
    sd_samplers, sd_schedulers = webui.sd_samplers, webui.sd_schedulers
    sd_samplers.set_samplers()                            # the WebUI does this on reload too
    assert names(sd_samplers.all_samplers).count("TLCM") == 1
    assert "TLCM" in sd_samplers.all_samplers_map and sd_samplers.samplers_map["tlcm"] == "TLCM"
    assert "TLCM" in sd_samplers.visible_sampler_names()
    assert names(sd_schedulers.schedulers).count("tlcm") == 1
    assert sd_schedulers.schedulers_map["tlcm"] is sd_schedulers.schedulers_map["TLCM"]
    assert sd_samplers.all_samplers_map["TLCM"].options["scheduler"] == "tlcm"


def test_cached_lookup_is_cleared(webui):
    assert webui.sd_samplers.get_sampler_and_scheduler("TLCM", "Automatic") == ("Euler a", "Automatic")
    load_extension(webui)
    assert webui.sd_samplers.get_sampler_and_scheduler("TLCM", "Automatic") == ("TLCM", "Automatic")


def test_automatic_schedule_of_the_tlcm_sampler_is_tlcm(webui):
    load_extension(webui)
    sd_samplers = webui.sd_samplers
    infotext = {"Sampler": "TLCM", "Schedule type": "TLCM"}
    assert sd_samplers.get_sampler_from_infotext(infotext) == "TLCM"
    assert sd_samplers.get_scheduler_from_infotext(infotext) == "Automatic"   # = the sampler's default
    assert sd_samplers.get_scheduler_from_infotext({"Sampler": "Euler", "Schedule type": "TLCM"}) == "TLCM"
    p = webui.processing.StableDiffusionProcessing(sampler_name="TLCM", scheduler="TLCM")
    sd_samplers.fix_p_invalid_sampler_and_scheduler(p)
    assert (p.sampler_name, p.scheduler) == ("TLCM", "TLCM")


def test_api_accepts_tlcm(webui):
    api = webui.api
    assert api.resolve_txt2img_sampler("TLCM") == ("Euler a", None)      # unknown before: silent fallback
    load_extension(webui)
    assert api.resolve_txt2img_sampler("TLCM") == ("TLCM", None)
    assert api.validate_sampler_name("TLCM") == "TLCM"
    assert {"name": "TLCM", "aliases": [], "options": {"scheduler": "tlcm", "uses_ensd": True}} in api.get_samplers()
    with pytest.raises(api.HTTPException) as err:
        api.validate_sampler_name("TLCM2")
    assert err.value.status_code == 400


def test_forge_add_sampler_path(webui):
    """Forge (dfdcbab6 ``modules/sd_samplers.py``) has ``add_sampler``, which rebinds ``all_samplers_map``."""
    sd_samplers = webui.sd_samplers
    calls = []

    def add_sampler(sampler):
        calls.append(sampler.name)
        if sampler.name not in [x.name for x in sd_samplers.all_samplers]:
            sd_samplers.all_samplers.append(sampler)
            sd_samplers.all_samplers_map = {x.name: x for x in sd_samplers.all_samplers}
            sd_samplers.set_samplers()

    sd_samplers.add_sampler = add_sampler
    load_extension(webui)
    load_extension(webui)
    assert calls == ["TLCM"]
    assert "TLCM" in sd_samplers.all_samplers_map and sd_samplers.samplers_map["tlcm"] == "TLCM"


def test_webui_without_scheduler_list_is_refused_clearly(webui, monkeypatch):
    from webui_tlcm.registration import register_with_webui
    monkeypatch.setitem(sys.modules, "modules.sd_schedulers", None)
    monkeypatch.delattr(sys.modules["modules"], "sd_schedulers")
    with pytest.raises(RuntimeError, match="A1111 >= 1.9"):
        register_with_webui()


def test_script_file_is_inert_outside_a_webui():
    code = (f"import runpy; g = runpy.run_path({str(SHIM)!r}); "
            "assert 'TLCMScript' not in g and g['_host_scripts'] is None; print('inert')")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "inert", out.stderr


def test_the_shim_exposes_only_the_extensions_packages(tmp_path):
    """Loaded from another working directory, the shim imports ``tlcm`` and ``webui_tlcm`` from the extension
    folder and adds nothing to ``sys.path``: ``tlcm_train``, ``tlcm_toy``, ``bench``, ``install``, ``run`` stay unimportable."""
    code = f"""
import importlib.util, json, sys
sys.path.insert(0, {str(REPO / "tests" / "webui_stub")!r})
from kdiffusion_pypi import load_k_diffusion
load_k_diffusion()
from modules import scripts
before = list(sys.path)
loaded = scripts.load_scripts([{str(SHIM)!r}])
print(json.dumps({{"scripts": [c.__name__ for c in loaded], "path_added": [p for p in sys.path if p not in before],
                  "files": [sys.modules[n].__file__ for n in ("tlcm", "webui_tlcm")],
                  "exposed": [n for n in ("tlcm_train", "tlcm_toy", "bench", "install", "run") if importlib.util.find_spec(n)]}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["scripts"] == ["TLCMScript"] and result["path_added"] == [] and result["exposed"] == []
    assert result["files"] == [str(REPO / "tlcm" / "__init__.py"), str(REPO / "webui_tlcm" / "__init__.py")]
