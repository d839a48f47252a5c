"""Every document the project points to exists, and the documents point only at things that exist.

Scanned: tracked ``.py .md .yaml .yml .toml .json`` files (``git ls-files``, outside ``.cache/`` and
``outputs/``) plus ``ARCHITECTURE.md`` and ``docs/*.md`` on disk. Checked:

- each ``docs/<name>.md`` and ``ARCHITECTURE.md`` reference (bare: from the repository root, as code
  comments cite them; with a ``./`` or ``../`` prefix: from the citing file's folder);
- every citation is of a document inside the repository: a markdown name followed by a section sign
  (``name.md §N``) must be a path from the citing file's folder or the root, and the cited section must be
  a numbered heading there; the name of a project document (``eval.md``) needs its path (``docs/eval.md``);
  a markdown name that is no file of the repository (``tlcm-method.md``), an absolute markdown path, and any
  pointer at the research-notes folder beside a checkout (``NOTES_FOLDER``, relative or absolute) fails;
- each relative markdown link ``[text](target#anchor)`` in a markdown file: the target, and for a
  markdown target its heading anchor (GitHub's slug rule);
- in ``ARCHITECTURE.md`` and ``docs/``: each backticked repository path (first component a top-level
  entry of the repository, or a slash path ending in a source suffix; write other projects' files as
  module names, ``comfy.samplers``), each backticked dotted name of our packages (``tlcm.lora.save_lora``),
  and in ARCHITECTURE.md's concept tables each name in the names column, defined in that row's file.

A failure lists every problem as ``file:line: what``. Seconds, no imports of the project.
"""
from __future__ import annotations

import ast
import functools
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED_SUFFIXES = (".py", ".md", ".yaml", ".yml", ".toml", ".json")
EXCLUDED_PREFIXES = (".cache/", "outputs/")
SOURCE_SUFFIXES = (".py", ".md", ".yaml", ".yml", ".toml", ".json", ".txt", ".ini", ".cfg")
OUR_PACKAGES = ("tlcm", "tlcm_train", "tlcm_toy", "comfyui_tlcm", "webui_tlcm")

URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)
DOC_REF = re.compile(r"(?<![\w./-])((?:[\w.-]+/)*(?:docs/[\w-]+(?:\.[\w-]+)*\.md|ARCHITECTURE\.md))(?![\w-])")
MD_LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
BACKTICKED = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
NOT_A_PATH = re.compile(r"[\s<>*…:{}|?$=,()\[\]'\"@#]")
DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")
IDENTIFIER = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
MD_NAME = re.compile(r"(?<![\w./~-])((?:~|\.{1,2})?/?(?:[\w.-]+/)*[\w-][\w.-]*\.md)(?![\w/-])")
SECTION = re.compile(r"`?\s*§\s*(\d+(?:\.\d+)*)(?:\s*[-–]\s*(\d+(?:\.\d+)*))?")
NOTES_FOLDER = "sha" + "red"     # spelled apart so that this file itself never points at that folder
OUTSIDE_NOTES = re.compile(rf"(?<![\w.-])(?:\.\./)+{NOTES_FOLDER}(?![\w-])|/work/{NOTES_FOLDER}(?![\w-])")
NUMBERED_HEADING = re.compile(r"#{1,6}\s+(\d+(?:\.\d+)*)\.?\s")
WRITTEN_FILES = frozenset({"metrics.md", "table1.md"})   # files the suite writes at run time (outputs/demo/, tlcm eval), named in prose


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.what}"


# -- what is scanned ---------------------------------------------------------------------------------------

def tracked_files(root: Path) -> list[str]:
    try:
        listed = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: no list of tracked files to scan")
    return listed.stdout.splitlines()


def scanned_files(root: Path, tracked: list[str]) -> list[str]:
    """Tracked text files to scan, plus ARCHITECTURE.md and docs/*.md as they are on disk."""
    names = set(tracked) | {"ARCHITECTURE.md"} | {f"docs/{p.name}" for p in (root / "docs").glob("*.md")}
    this = Path(__file__).resolve()
    return sorted(n for n in names
                  if n.endswith(SCANNED_SUFFIXES) and not n.startswith(EXCLUDED_PREFIXES)
                  and (root / n).is_file() and (root / n).resolve() != this)


def top_level_entries(tracked: list[str]) -> set[str]:
    return {name.split("/", 1)[0] for name in tracked} | {"docs", "ARCHITECTURE.md"}


def numbered_lines(text: str, markdown: bool):
    """(line number, line) pairs; in markdown, lines inside fenced code blocks are left out."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if markdown and line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


# -- resolving ---------------------------------------------------------------------------------------------

def resolve(root: Path, citing: str, ref: str) -> Path | None:
    """The path ``ref`` names: from the citing file's folder when it starts with ./ or ../, else from the
    repository root. None when it points outside the repository."""
    base = (root / citing).parent if ref.startswith(("./", "../")) else root
    path = (base / ref).resolve()
    return path if path == root.resolve() or root.resolve() in path.parents else None


def slug(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@functools.lru_cache(maxsize=None)
def anchors(path: Path) -> frozenset[str]:
    found, seen = set(), {}
    for _, line in numbered_lines(path.read_text(encoding="utf-8"), markdown=True):
        if m := re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line):
            base = slug(m.group(1))
            count = seen.get(base, 0)
            found.add(base if count == 0 else f"{base}-{count}")
            seen[base] = count + 1
    return frozenset(found)


@functools.lru_cache(maxsize=None)
def section_numbers(path: Path) -> frozenset[str]:
    """The numbers of a markdown file's numbered headings (``## 5. …`` -> 5, ``### 1.5 …`` -> 1.5)."""
    return frozenset(m.group(1) for _, line in numbered_lines(path.read_text(encoding="utf-8"), markdown=True)
                     if (m := NUMBERED_HEADING.match(line)))


@functools.lru_cache(maxsize=None)
def defined_names(path: Path) -> frozenset[str]:
    """Names a Python file defines or imports anywhere (functions, classes, methods, assignments)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return frozenset(names)


def module_file(root: Path, parts: list[str]) -> Path | None:
    base = root.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


# -- the checks --------------------------------------------------------------------------------------------

def doc_reference_problems(root: Path, name: str, text: str) -> list[Problem]:
    problems = []
    for number, line in numbered_lines(text, markdown=False):
        for m in DOC_REF.finditer(URL.sub(" ", line)):
            ref = m.group(1)
            path = resolve(root, name, ref)
            if path is None:
                problems.append(Problem(name, number, f"{ref} points outside the repository"))
            elif not path.is_file():
                problems.append(Problem(name, number, f"{ref} does not exist"))
    return problems


def citation_problems(root: Path, name: str, text: str, tracked: list[str]) -> list[Problem]:
    """Every cited document is a file inside the repository, every cited section a heading of it.

    ``docs/…`` and ``ARCHITECTURE.md`` references that do not exist are reported by
    :func:`doc_reference_problems`; here they only get their ``§N`` checked."""
    documents = {p.name for p in (root / "docs").glob("*.md")} | {"ARCHITECTURE.md"}
    basenames = {Path(t).name for t in tracked}
    problems = []
    for number, line in numbered_lines(text, markdown=False):
        line = URL.sub(" ", line)
        for m in OUTSIDE_NOTES.finditer(line):
            problems.append(Problem(name, number, f"{m.group(0)} points outside the project"))
        for m in MD_NAME.finditer(line):
            ref, section = m.group(1), SECTION.match(line, m.end())
            if ref.startswith(("/", "~")):
                problems.append(Problem(name, number, f"{ref} is an absolute path, not a document of the repository"))
                continue
            path = cited_path(root, name, ref)
            if path is not None:
                if section and (why := section_problem(path, ref, section)):
                    problems.append(Problem(name, number, why))
                continue
            if DOC_REF.fullmatch(ref) or OUTSIDE_NOTES.search(ref) or line[:m.start()].endswith("]("):
                continue                                     # reported above, or a link target (checked there)
            quoted = m.start() > 0 and line[m.start() - 1] in "\"'" and line[m.end():m.end() + 1] in ("\"", "'")
            if section:
                problems.append(Problem(name, number, f"{ref} §{section.group(1)} cites a document that is not "
                                                      "a path in the repository"))
            elif Path(ref).name in documents:
                problems.append(Problem(name, number, f"{ref} is not a path in the repository "
                                                      f"(the document is docs/{Path(ref).name})"))
            elif Path(ref).name not in basenames and not quoted and ref not in WRITTEN_FILES:
                problems.append(Problem(name, number, f"{ref} is not a file of the repository"))
    return problems


def cited_path(root: Path, citing: str, ref: str) -> Path | None:
    """The existing file inside the repository that ``ref`` names: from the citing file's folder, and unless
    it starts with ./ or ../ also from the root. None if there is none."""
    bases = [(root / citing).parent] + ([] if ref.startswith(("./", "../")) else [root])
    for base in bases:
        path = (base / ref).resolve()
        if root.resolve() in path.parents and path.is_file():
            return path
    return None


def section_problem(path: Path, ref: str, section: re.Match) -> str | None:
    cited = [n for n in section.groups() if n]
    missing = [n for n in cited if n not in section_numbers(path)]
    return f"{ref} has no section §{', §'.join(missing)}" if missing else None


def markdown_link_problems(root: Path, name: str, text: str) -> list[Problem]:
    problems = []
    for number, line in numbered_lines(text, markdown=True):
        for m in MD_LINK.finditer(line):
            target = m.group(1)
            if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
                continue                                     # http:, https:, mailto:
            file_part, _, anchor = target.partition("#")
            path = (root / name).resolve() if not file_part else resolve(root, name, "./" + file_part)
            if path is None or not path.exists():
                problems.append(Problem(name, number, f"link target {target} does not exist"))
            elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                problems.append(Problem(name, number, f"link target {target}: no heading with anchor #{anchor}"))
    return problems


def backtick_problems(root: Path, name: str, text: str, top_level: set[str]) -> list[Problem]:
    """Repository paths and dotted names of our packages in backticks (ARCHITECTURE.md and docs/)."""
    problems = []
    for number, line in numbered_lines(text, markdown=True):
        for m in BACKTICKED.finditer(line):
            token = m.group(1).strip()
            if DOTTED.match(token) and token.split(".")[0] in OUR_PACKAGES:
                if why := dotted_problem(root, token):
                    problems.append(Problem(name, number, why))
                continue
            if NOT_A_PATH.search(token) or not token or token.startswith(("/", "~", "-")):
                continue
            first = token.split("/", 1)[0]
            if first in top_level or ("/" in token and token.rstrip("/").endswith(SOURCE_SUFFIXES)):
                path = root / token
                if not (path.is_dir() if token.endswith("/") else path.exists()):
                    problems.append(Problem(name, number, f"`{token}` does not exist in the repository"))
    return problems


def dotted_problem(root: Path, token: str) -> str | None:
    """``pkg.module[.name]``: the longest module prefix must exist and define the rest (one name)."""
    parts = token.split(".")
    for cut in range(len(parts), 0, -1):
        module = module_file(root, parts[:cut])
        if module is None:
            continue
        rest = parts[cut:]
        if not rest or (len(rest) == 1 and rest[0] in defined_names(module)):
            return None
        return f"`{token}`: {module.relative_to(root)} defines no {'.'.join(rest)}"
    return f"`{token}`: no module {parts[0]}.{parts[1]} in the repository"


def concept_table_problems(root: Path, name: str, text: str) -> list[Problem]:
    """Rows ``| concept | `file.py` | `name`, `name` |``: every name is defined in that file."""
    problems = []
    for number, line in numbered_lines(text, markdown=True):
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.lstrip().startswith("|") else []
        if len(cells) < 3:
            continue
        files = BACKTICKED.findall(cells[1])
        if len(files) != 1 or not files[0].endswith(".py"):
            continue
        path = root / files[0]
        if not path.is_file():
            problems.append(Problem(name, number, f"`{files[0]}` does not exist"))
            continue
        for ident in BACKTICKED.findall(cells[2]):
            if not IDENTIFIER.match(ident):
                problems.append(Problem(name, number, f"`{ident}` is not a Python name"))
            elif ident.split(".")[-1] not in defined_names(path):
                problems.append(Problem(name, number, f"`{ident}` is not defined in {files[0]}"))
    return problems


def all_problems(root: Path, tracked: list[str]) -> list[Problem]:
    top_level = top_level_entries(tracked)
    problems = []
    for name in scanned_files(root, tracked):
        text = (root / name).read_text(encoding="utf-8", errors="replace")
        problems += doc_reference_problems(root, name, text)
        problems += citation_problems(root, name, text, tracked)
        if name.endswith(".md"):
            problems += markdown_link_problems(root, name, text)
        if name == "ARCHITECTURE.md" or name.startswith("docs/"):
            problems += backtick_problems(root, name, text, top_level)
        if name == "ARCHITECTURE.md":
            problems += concept_table_problems(root, name, text)
    return problems


# -- tests -------------------------------------------------------------------------------------------------

def test_the_documents_exist():
    for name in ("ARCHITECTURE.md", "docs/method.md", "docs/hosts.md", "docs/trainer.md", "docs/eval.md"):
        assert (ROOT / name).is_file(), f"{name} is missing"


def test_every_reference_resolves():
    problems = all_problems(ROOT, tracked_files(ROOT))
    assert not problems, "dangling references:\n" + "\n".join(map(str, problems))


def _write(root: Path, name: str, text: str) -> str:
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(text, encoding="utf-8")
    return name


def test_the_checks_name_file_and_line_of_each_dangling_reference(tmp_path):
    """On a small fake repository: every kind of dangling reference is reported as file:line."""
    docs, notes = "do" + "cs/", NOTES_FOLDER   # spelled apart: this file cites no fake document itself
    _write(tmp_path, f"{docs}real.md", "# Real doc\n\n## 2. Part two\n")
    _write(tmp_path, "pkg/mod.py", "def here():\n    pass\n")
    files = [
        _write(tmp_path, "pkg/code.py", f"# see {docs}real.md\n# and {docs}gone.md §3\n"),
        _write(tmp_path, "pkg/README.md", f"ok ../{docs}real.md\nbad `../{notes}/{docs}real.md`\n"
                                          f"[x](../{docs}real.md#2-part-two) [y](../{docs}real.md#nope) [z](none.md)\n"),
        _write(tmp_path, "ARCHITECTURE.md", "| c | `pkg/mod.py` | `here`, `there` |\n"
                                            "`pkg/missing.py` and `pkg/mod.py` and `other/x.py` and `models/x/`\n"),
    ]
    tracked = [*files, f"{docs}real.md", "pkg/mod.py"]
    found = sorted(map(str, all_problems(tmp_path, tracked)))
    assert found == sorted([
        f"pkg/code.py:2: {docs}gone.md does not exist",
        f"pkg/README.md:2: ../{notes}/{docs}real.md does not exist",
        f"pkg/README.md:2: ../{notes} points outside the project",
        f"pkg/README.md:3: link target ../{docs}real.md#nope: no heading with anchor #nope",
        "pkg/README.md:3: link target none.md does not exist",
        "ARCHITECTURE.md:1: `there` is not defined in pkg/mod.py",
        "ARCHITECTURE.md:2: `pkg/missing.py` does not exist in the repository",
        "ARCHITECTURE.md:2: `other/x.py` does not exist in the repository",
    ]), found


def test_a_citation_of_a_document_outside_the_repository_fails(tmp_path):
    """Notes kept outside the project, bare document names and missing sections are reported as file:line."""
    docs, sign, notes = "do" + "cs/", "\u00a7", NOTES_FOLDER   # spelled apart: no citation in this file itself
    _write(tmp_path, "docs/eval.md", "# Eval\n\n## 5. Evaluator\n\n### 5.1 Sanity\n")
    _write(tmp_path, "bench/results/run.md", "results\n")
    files = [
        _write(tmp_path, "pkg/code.py", f"# {docs}eval.md {sign}5 and {docs}eval.md {sign}5.1-5 are fine\n"
                                        f"# recipe: tlcm-method.md {sign}3\n"
                                        f"# see eval.md {sign}5\n"
                                        f"# and {docs}eval.md {sign}7\n"
                                        'out = folder / "report.md"  # a file the code writes\n'),
        _write(tmp_path, "pkg/README.md", f"bare eval.md, then `/work/{notes}/{docs}eval.md`\n"
                                          "`run.md` is in bench/results/; tlcm-method.md is not here\n"
                                          f"data in ../../{notes}/data and /work/{notes}\n"),
        _write(tmp_path, f"{docs}more.md", f"[eval.md {sign}5.1](eval.md#51-sanity) and eval.md {sign}6\n"),
    ]
    tracked = [*files, "docs/eval.md", "bench/results/run.md"]
    found = sorted(map(str, all_problems(tmp_path, tracked)))
    assert found == sorted([
        f"pkg/code.py:2: tlcm-method.md {sign}3 cites a document that is not a path in the repository",
        f"pkg/code.py:3: eval.md {sign}5 cites a document that is not a path in the repository",
        f"pkg/code.py:4: {docs}eval.md has no section {sign}7",
        "pkg/README.md:1: eval.md is not a path in the repository (the document is docs/eval.md)",
        f"pkg/README.md:1: /work/{notes} points outside the project",
        f"pkg/README.md:1: /work/{notes}/{docs}eval.md is an absolute path, not a document of the repository",
        "pkg/README.md:2: tlcm-method.md is not a file of the repository",
        f"pkg/README.md:3: ../../{notes} points outside the project",
        f"pkg/README.md:3: /work/{notes} points outside the project",
        f"{docs}more.md:1: eval.md has no section {sign}6",
    ]), found
