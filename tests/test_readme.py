"""The README stays true as the code moves: every setting the code reads is documented there, and every
file it names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BENCHMARKS = (ROOT / "BENCHMARKS.md").read_text()
# Read only by the benchmarks' own servers, not a setting a person chooses.
UNDOCUMENTED_ON_PURPOSE = {"MTL_TIMING_LOG"}


def settings_read_by_the_code() -> set[str]:
    names = set()
    for folder in ("mtl_core", "dashboard", "pages"):
        for path in (ROOT / folder).rglob("*.py"):
            names |= set(re.findall(r"[\"'](MTL_[A-Z_]+)[\"']", path.read_text()))
    names |= set(re.findall(r"[\"'](MTL_[A-Z_]+)[\"']", (ROOT / "app.py").read_text()))
    return names


def test_every_setting_the_code_reads_is_in_the_readme():
    names = settings_read_by_the_code()
    assert {"MTL_HOME", "MTL_WORKERS", "MTL_NEW_IDS_PER_ADDRESS"} <= names  # the scan itself works
    missing = sorted(n for n in names - UNDOCUMENTED_ON_PURPOSE if not re.search(rf"\b{n}\b", README))
    assert not missing, f"settings read by the code but not in README.md: {missing}"


def test_every_file_the_docs_name_exists():
    named = set(re.findall(r"`((?:mtl_core|dashboard|pages|benchmarks|scripts|tests)/[\w/.-]+\.\w+)`", README))
    named |= set(re.findall(r"`((?:mtl_core|dashboard|pages|benchmarks|scripts|tests)/[\w/.-]+\.\w+)`", BENCHMARKS))
    named |= set(re.findall(r"\]\(([\w/.-]+\.(?:png|md))\)", README))
    assert len(named) >= 10
    gone = sorted(p for p in named if not (ROOT / p).exists())
    assert not gone, f"files named in README.md or BENCHMARKS.md that do not exist: {gone}"


def test_the_readme_is_short_enough_for_a_newcomer():
    assert len(README.splitlines()) <= 160
