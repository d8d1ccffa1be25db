"""The repository speaks for itself: no tracked file cites documents a user who clones it lacks.

Cards, docstrings, configs and `zoo reproduce` output must cite what a reader can check (the
paper's section, equation or table, the official code, or the measured numbers), never the
planning notes the zoo was built from. Forbidden, case-insensitive:

* ``DESIGN.md``, ``../shared``, ``shared/papers`` and ``papers/`` (paths outside the repository);
* the word "brief" (also "briefs", "brief's") as a whole word: the name those notes went by.
  Longer words ("briefly", "briefing") and the idiom "in brief" are allowed; for the
  adjective, write "short".
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

__all__: list[str] = []

ROOT = Path(__file__).resolve().parents[1]
THIS_FILE = Path(__file__).resolve().relative_to(ROOT).as_posix()

_PATHS = re.compile(r"design\.md|\.\./shared|shared/papers|(?<![\w.-])papers/", re.IGNORECASE)
_BRIEF = re.compile(r"(?<![\w-])brief(?:s|'s|’s)?(?![\w-])", re.IGNORECASE)
_IN_BRIEF = re.compile(r"\bin\s+brief\b(?!'|’|s\b)", re.IGNORECASE)


def offending(line: str) -> list[str]:
    """The forbidden citations in one line of text (empty when the line is clean)."""
    found = [m.group(0) for m in _PATHS.finditer(line)]
    allowed = {m.end() for m in _IN_BRIEF.finditer(line)}
    found += [m.group(0) for m in _BRIEF.finditer(line) if m.end() not in allowed]
    return found


def _tracked_text_files() -> list[Path]:
    """Every file git tracks that decodes as UTF-8 text, minus this rule's own test."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the rule is checked on the tracked files of a clone")
    files = []
    for name in filter(None, out.split("\0")):
        path = ROOT / name
        if name == THIS_FILE or not path.is_file():
            continue
        try:
            path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            continue  # binary (images, weights): nothing to read
        files.append(path)
    return files


@pytest.mark.parametrize(
    "line",
    [
        "The brief's CPU check measured 0.93",
        "see the brief",
        "Paper / Brief: the theory predicts",
        "(brief: +0.23 with this SLP)",
        "the implementation briefs in papers",
        "See `../shared/DESIGN.md` for the contracts.",
        "one per paper in /work/shared/papers/",
        "design.md lists the layout",
        "the brief's numbering, ``papers/A1-srat.md``",
        "papers/C6-bcd-greedy-rules.md",
    ],
)
def test_rule_catches_citations_of_missing_files(line: str) -> None:
    assert offending(line), f"the rule missed a forbidden citation: {line!r}"


@pytest.mark.parametrize(
    "line",
    [
        "It briefly drops below the threshold.",
        "a briefing for reviewers",
        "In brief, the claim held on every seed.",
        "an independent CPU feasibility check measured F1 0.471 vs 0.239",
        "docs/design-notes.md and shared/ folders",
        "my_papers/ and white-papers/ hold drafts",
    ],
)
def test_rule_allows_ordinary_english(line: str) -> None:
    assert offending(line) == [], f"the rule flags ordinary text: {line!r} -> {offending(line)}"


def test_no_tracked_file_cites_files_users_do_not_have() -> None:
    hits: dict[str, list[str]] = {}
    for path in _tracked_text_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if found := offending(line):
                rel = path.relative_to(ROOT).as_posix()
                hits.setdefault(rel, []).append(f"  {rel}:{number}: {', '.join(found)}: {line.strip()[:100]}")
    report = "\n".join(line for lines in hits.values() for line in lines)
    if hits:
        pytest.fail(
            f"{sum(map(len, hits.values()))} citations of files a user does not have, in {len(hits)} files; "
            f"cite the paper (section, equation, table), the official code or the measured numbers instead:\n"
            f"{report}",
            pytrace=False,
        )
