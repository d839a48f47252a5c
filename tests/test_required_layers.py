"""Under TLCM_REQUIRE_ALL_LAYERS=1 (set by .ci/run) a skip is a failure, except for optional extras."""
from pathlib import Path

pytest_plugins = ["pytester"]

INNER = '''
import pytest

def test_required():
    pytest.skip("gradio is not installed")

@pytest.mark.optional_layer
def test_cuda_only():
    pytest.skip("no CUDA")

@pytest.mark.xfail(reason="known", strict=True)
def test_known_bug():
    assert False
'''


def run_inner(pytester, monkeypatch, switch):
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makeini("[pytest]\nmarkers =\n    optional_layer: optional\n")
    pytester.makepyfile(test_inner=INNER, test_inner_module='import pytest\n'
                        'pytest.importorskip("surely_absent_tlcm_module", reason="gradio is not installed")\n')
    if switch:
        monkeypatch.setenv("TLCM_REQUIRE_ALL_LAYERS", "1")
    else:
        monkeypatch.delenv("TLCM_REQUIRE_ALL_LAYERS", raising=False)
    return pytester.runpytest_subprocess("-q", "--continue-on-collection-errors")


def test_skips_of_required_layers_fail_under_the_switch(pytester, monkeypatch):
    result = run_inner(pytester, monkeypatch, switch=True)
    result.assert_outcomes(failed=1, skipped=1, xfailed=1, errors=1)
    result.stdout.fnmatch_lines(["*required layer skipped*gradio is not installed*"])
    assert result.ret != 0


def test_without_the_switch_skips_stay_skips(pytester, monkeypatch):
    result = run_inner(pytester, monkeypatch, switch=False)
    result.assert_outcomes(skipped=3, xfailed=1)
    assert result.ret == 0
