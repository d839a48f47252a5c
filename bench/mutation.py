"""Mutation testing of the TLCM core with mutmut 3.x, always in a throwaway copy of the repository.

    pip install "mutmut==3.8.1"
    python bench/mutation.py                              # the default modules below, committed HEAD
    python bench/mutation.py schedules sampling --json bench/results/mutation_after.json

The working tree is never edited: for each module the committed sources (``git archive <rev>``: ``tlcm/``,
``tests/conftest.py``, ``pyproject.toml`` and the module's test files) are unpacked into a temporary folder,
the ``tests/test_core_mutants_<module>.py`` file of the working tree is laid over it (so new tests count before
they are committed), a ``[mutmut]`` section is written to that copy's ``setup.cfg``, and ``mutmut run`` runs
there in its own process group. A timeout or Ctrl-C kills that group; the folder is removed in ``finally``.

mutmut mutates function bodies only (operators, comparisons, constants, strings, arguments, ``and``/``or``,
``None`` assignments, ...), runs each mutant with ``pytest -x -q`` limited to the tests that executed the
mutated function (its "stats" pass), and reports killed / survived / timeout / no tests / suspicious.
Module-level tables (``OFFICIAL_STEP_INDICES``) are not mutated; those are pinned by written-out tests.
"""
from __future__ import annotations

import argparse
import ast
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tokenize
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# module key -> (file to mutate, test files: the fast subset relevant to it). test_parity.py is left out:
# it builds the tiny SDXL pipeline (3.5 min on the shared 2-core box) for each stats/clean pass.
MODULES: dict[str, tuple[str, list[str]]] = {
    "schedules": ("tlcm/schedules.py", ["tests/test_schedules.py"]),
    "sampling": ("tlcm/sampling.py", ["tests/test_sampling.py"]),
    "lora_weights": ("tlcm/lora/weights.py", ["tests/test_lora_files.py", "tests/test_lora_peft.py"]),
    "lora_config": ("tlcm/lora/config.py", ["tests/test_lora_files.py", "tests/test_lora_peft.py"]),
    "scheduler": ("tlcm/scheduler.py", ["tests/test_scheduler_pipelines.py", "tests/test_nonfinite.py"]),
    # the trainer's consistency targets (stage 1 MLCD, stage 2 LCD) against their written-out math
    "stage1_mlcd": ("tlcm_train/stage1_mlcd.py", ["tests/test_stage_targets.py"]),
    "stage2_lcd": ("tlcm_train/stage2_lcd.py", ["tests/test_stage_targets.py"]),
}
# Helper modules the chosen tests import (archived into the copy, not passed to pytest as tests).
# The scheduler's fast tests: test_scheduler_pipelines.py (14 s alone) and test_nonfinite.py (7 s). Left out:
# test_generate.py (58 s alone: tlcm.generate end to end, rerun for every surviving step/set_timesteps mutant),
# test_parity.py (3.5 min), test_train.py (a training run); test_comfyui*.py/test_host_imports.py name the
# ComfyUI node "TLCMScheduler", not this class.
HELPERS: dict[str, list[str]] = {
    "scheduler": ["tests/reference_tlcm.py"],
    "stage1_mlcd": ["tests/stage_kit.py"],
    "stage2_lcd": ["tests/stage_kit.py"],
}
DEFAULT_MODULES = ["schedules", "sampling", "lora_weights"]     # lora_config, scheduler: on request (slow)
# Functions left out (``name`` or ``Class.name``): config.py is mutated for its scale rules (from_dict, rank/alpha
# patterns, the field checks, the official-scale warning); finding and recognising the config file is file
# handling, not scale. mutmut 3.8.1's ``do_not_mutate_patterns`` only skips expressions that start on a matching
# line (a pattern on a ``def`` line leaves the body mutated), so the copy's ``def`` header gets mutmut's
# ``# pragma: no mutate block`` comment instead: the whole function is left as it is. Line numbers do not change.
SKIP: dict[str, list[str]] = {
    "lora_config": ["looks_like_lora_config", "_is_named_config", "_lora_config_data", "find_adapter_config",
                    "_targets", "AdapterConfig.from_file"],
}

# mutmut forks its test process per mutant; a forked child of a process whose OpenMP pool is running can hang
# (seen as spurious "timeout"s on torch-heavy tests), so torch runs single-threaded. The timeout constant is
# raised from mutmut's 1 s because the box is shared: a timeout must mean a hang, not a busy neighbour.
SINGLE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TIMEOUT_CONSTANT_S = 10

STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped",
          36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout",
          37: "caught by type check", None: "not checked"}


def mutmut_version() -> str:
    from importlib.metadata import version
    return version("mutmut")


def mark_not_mutated(source_file: Path, names: list[str]) -> None:
    """Append ``# pragma: no mutate block`` to the header line (the ``:``) of each named function."""
    text = source_file.read_text()
    tree = ast.parse(text)
    found = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found[node.name] = node
        elif isinstance(node, ast.ClassDef):
            found.update({f"{node.name}.{item.name}": item for item in node.body
                          if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))})
    missing = [name for name in names if name not in found]
    if missing:
        raise SystemExit(f"{source_file}: no function(s) {', '.join(missing)} to leave out")
    lines = text.splitlines(keepends=True)
    for name in names:
        node = found[name]
        # the header ends at the first top-level ":" after the signature's closing bracket
        tokens = tokenize.generate_tokens(io.StringIO("".join(lines[node.lineno - 1:node.body[0].lineno])).readline)
        depth, colon_row = 0, None
        for tok in tokens:
            if tok.type == tokenize.OP and tok.string in "([{":
                depth += 1
            elif tok.type == tokenize.OP and tok.string in ")]}":
                depth -= 1
            elif tok.type == tokenize.OP and tok.string == ":" and depth == 0:
                colon_row = tok.start[0]
                break
        index = node.lineno - 1 + colon_row - 1
        if "#" in lines[index]:
            raise SystemExit(f"{source_file}:{index + 1}: header already has a comment; cannot leave {name} out")
        lines[index] = lines[index].rstrip("\n") + "  # pragma: no mutate block\n"
    source_file.write_text("".join(lines))


def prepare_copy(rev: str, source: str, tests: list[str], extra_tests: list[Path], dest: Path,
                 skip: list[str], helpers: list[str] = ()) -> list[str]:
    """Unpack ``rev`` (core + chosen tests + their helper modules) into ``dest``; returns the test paths it has."""
    in_rev = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, "--", *tests], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout.split()
    helpers_in_rev = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, "--", *helpers], cwd=REPO,
                                    check=True, capture_output=True, text=True).stdout.split() if helpers else []
    package = source.split("/")[0]                  # tlcm, or tlcm_train (which imports tlcm)
    archive = subprocess.run(["git", "archive", rev, *dict.fromkeys(["tlcm", package]), "tests/conftest.py",
                              "pyproject.toml", *in_rev, *helpers_in_rev],
                             cwd=REPO, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    selected = list(in_rev)
    for extra in extra_tests:
        shutil.copy2(extra, dest / "tests" / extra.name)
        selected.append(f"tests/{extra.name}")
    also_copy = ["also_copy=", "    tlcm"] if package != "tlcm" else []
    lines = ["[mutmut]", f"source_paths={package}", f"only_mutate={source}", "use_git_change_detection=false",
             *also_copy,
             f"timeout_constant={TIMEOUT_CONSTANT_S}",
             "pytest_add_cli_args_test_selection=", *(f"    {t}" for t in selected),
             "pytest_add_cli_args=", "    -p", "    no:cacheprovider"]
    if skip:
        mark_not_mutated(dest / source, skip)
    lines.append("")
    (dest / "setup.cfg").write_text("\n".join(lines))
    return selected


def run_group(cmd: list[str], cwd: Path, timeout: float, log: Path) -> int | None:
    """Run ``cmd`` in its own session; on timeout or Ctrl-C kill the whole group. None = timed out."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **SINGLE_THREAD, "PYTHONDONTWRITEBYTECODE": "1"})
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def function_lines(source_file: Path) -> dict[str, int]:
    """mutmut's mangled function names -> first line of the function (decorators excluded)."""
    tree = ast.parse(source_file.read_text())
    lines = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines[f"x_{node.name}"] = node.lineno
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines[f"xǁ{node.name}ǁ{item.name}"] = item.lineno
    return lines


def describe(mutant: str, diff: str, source_lines: list[str], def_lines: dict[str, int]) -> dict:
    """file line, original and mutated text of a mutant from ``mutmut show``'s function-relative diff."""
    func = mutant.split(".")[-1].rsplit("__mutmut_", 1)[0]
    before, after, line = [], [], None
    rel = None
    for row in diff.splitlines():
        hunk = re.match(r"@@ -(\d+)", row)
        if hunk:
            rel = int(hunk.group(1))
            continue
        if rel is None or row.startswith(("---", "+++")):
            continue
        if row.startswith("-"):
            before.append(row[1:].strip())
            if line is None and func in def_lines:
                line = def_lines[func] + rel - 1
            rel += 1
        elif row.startswith("+"):
            after.append(row[1:].strip())
        else:
            rel += 1
    if line is not None and before and source_lines[line - 1].strip() != before[0]:
        line = next((i + 1 for i, text in enumerate(source_lines) if text.strip() == before[0]), line)
    return {"mutant": mutant, "line": line, "before": " / ".join(before), "after": " / ".join(after)}


def run_module(key: str, rev: str, timeout: float, max_children: int, keep: bool, new_tests: bool = True) -> dict:
    source, tests = MODULES[key]
    extra = sorted(REPO.glob(f"tests/test_core_mutants_{key}.py")) if new_tests else []
    work = Path(tempfile.mkdtemp(prefix=f"tlcm-mutation-{key}-"))
    started = time.monotonic()
    try:
        selected = prepare_copy(rev, source, tests, extra, work, SKIP.get(key, []), HELPERS.get(key, []))
        cmd = [sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children)]
        rc = run_group(cmd, work, timeout, work / "mutmut.log")
        meta_path = work / "mutants" / f"{source}.meta"
        codes = json.loads(meta_path.read_text())["exit_code_by_key"] if meta_path.exists() else {}
        counts: dict[str, int] = {}
        for code in codes.values():
            status = STATUS.get(code, "suspicious")
            counts[status] = counts.get(status, 0) + 1
        src_file = work / source
        source_lines, def_lines = src_file.read_text().splitlines(), function_lines(src_file)
        survivors = []
        for name, code in sorted(codes.items(), key=lambda kv: _order(kv[0])):
            if STATUS.get(code, "suspicious") in ("killed", "caught by type check"):
                continue
            show = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=work, capture_output=True,
                                  text=True, timeout=120).stdout
            survivors.append({**describe(name, show, source_lines, def_lines),
                              "status": STATUS.get(code, "suspicious")})
        killed = counts.get("killed", 0) + counts.get("caught by type check", 0)
        total = len(codes)
        log_tail = (work / "mutmut.log").read_text(errors="replace")[-2000:] if rc != 0 else ""
        return {"module": key, "file": source, "tests": selected, "mutants": total, "killed": killed,
                "survived": counts.get("survived", 0), "timeout": counts.get("timeout", 0),
                "no_tests": counts.get("no tests", 0), "other": total - killed - counts.get("survived", 0)
                - counts.get("timeout", 0) - counts.get("no tests", 0),
                "score": round(100.0 * (killed + counts.get("timeout", 0)) / total, 1) if total else None,
                "mutmut_exit": rc, "wall_s": round(time.monotonic() - started, 1), "survivors": survivors,
                "log_tail": log_tail}
    finally:
        if keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def _order(name: str) -> tuple[str, int]:
    base, _, num = name.rpartition("__mutmut_")
    return base, int(num) if num.isdigit() else 0


def markdown(report: dict) -> str:
    rows = ["| module | file | tests | mutants | killed | survived | timeouts | no tests | score | wall |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for m in report["modules"]:
        rows.append(f"| {m['module']} | `{m['file']}` | {', '.join(Path(t).name for t in m['tests'])} | {m['mutants']} "
                    f"| {m['killed']} | {m['survived']} | {m['timeout']} | {m['no_tests']} | {m['score']}% "
                    f"| {m['wall_s']:.0f} s |")
    out = ["\n".join(rows), ""]
    out += [f"Not mutated in {key}: {', '.join(f'`{name}`' for name in SKIP[key])}" for key in SKIP
            if key in [m["module"] for m in report["modules"]]]
    for m in report["modules"]:
        if m["survivors"]:
            out.append(f"Survivors in `{m['file']}`:\n")
            out += [f"- {m['file']}:{s['line']} `{s['mutant'].split('.')[-1]}` ({s['status']}): `{s['before']}` -> "
                    f"`{s['after']}`" for s in m["survivors"]]
            out.append("")
    return "\n".join(out)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    # SIGINT/SIGTERM unwind through run_group's and run_module's finally blocks (kill mutmut, remove the copy),
    # also when started in the background, where a shell leaves SIGINT ignored.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", metavar="MODULE",
                        help=f"any of {', '.join(MODULES)} (default: {' '.join(DEFAULT_MODULES)})")
    parser.add_argument("--rev", default="HEAD", help="commit whose core and tests are mutated (default HEAD)")
    parser.add_argument("--timeout", type=float, default=900, help="wall-clock limit per module, seconds")
    parser.add_argument("--max-children", type=int, default=2, help="parallel mutants (the box has 2 cores)")
    parser.add_argument("--json", type=Path, help="write the full report (every survivor) here, after each module")
    parser.add_argument("--without-new-tests", action="store_true",
                        help="do not lay the working tree's tests/test_core_mutants_<module>.py over the copy")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copies (for `mutmut browse`)")
    args = parser.parse_args(argv)
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {', '.join(unknown)}; choose from {', '.join(MODULES)}")
    commit = subprocess.run(["git", "rev-parse", args.rev], cwd=REPO, check=True, capture_output=True,
                            text=True).stdout.strip()
    report = {"tool": f"mutmut {mutmut_version()}", "python": sys.version.split()[0], "commit": commit,
              "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "command": " ".join(["python", "bench/mutation.py", *(argv if argv is not None else sys.argv[1:])]),
              "modules": []}
    for key in args.modules or DEFAULT_MODULES:
        try:
            result = run_module(key, commit, args.timeout, args.max_children, args.keep, not args.without_new_tests)
        except KeyboardInterrupt as stop:
            print(f"interrupted ({stop}) during {key}; its copy is removed, the working tree was never touched",
                  file=sys.stderr)
            return 130
        report["modules"].append(result)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
        print(f"{key}: {result['mutants']} mutants, {result['killed']} killed, {result['survived']} survived, "
              f"{result['timeout']} timeouts, score {result['score']}% ({result['wall_s']:.0f} s, "
              f"mutmut exit {result['mutmut_exit']})", flush=True)
        if result["mutmut_exit"] != 0:
            print(result["log_tail"], file=sys.stderr)
    print(f"\n{report['tool']}, commit {commit[:10]}, {report['date']}\n")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
