"""The layers point down only: jobs -> pipelines -> stages, and inside stages the stage modules sit
above the rooms they use (media, engines, formats, storage). Every import counts, including the
ones inside functions."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STAGE_MODULES = {"base", "normalize", "decode", "judge", "label", "write"}
ROOMS = ("media", "engines", "formats", "storage")


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, absolute names, wherever in the file the import is."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def shown(path: Path) -> Path:
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def violations(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{shown(path)} imports {name}"
        for path in paths
        for name in sorted(imports_of(path))
        if name.split(".")[0] in forbidden
    ]


def test_the_packages_are_found():
    assert len(files("stages")) > 20 and files("pipelines") and files("jobs")


def test_stages_never_import_pipelines_or_jobs():
    assert violations(files("stages"), ("pipelines", "jobs", "bench", "tests")) == []


def test_pipelines_never_import_jobs():
    assert violations(files("pipelines"), ("jobs", "bench", "tests")) == []


def test_jobs_never_import_benchmarks_or_tests():
    assert violations(files("jobs"), ("bench", "tests")) == []


@pytest.mark.parametrize("room", ROOMS)
def test_rooms_never_import_the_stages_above_them(room):
    bad = [
        f"{shown(path)} imports {name}"
        for path in files(f"stages/{room}")
        for name in sorted(imports_of(path))
        if name.startswith("stages.") and name.split(".")[1] in STAGE_MODULES
    ]
    assert bad == []


def test_engines_and_media_never_import_formats():
    assert [v for v in violations(files("stages/engines") + files("stages/media"), ("stages",))
            if "stages.formats" in v] == []


def test_a_violation_is_caught(tmp_path):
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("def f():\n    from pipelines.config import RunConfig\n    import jobs.cli\n")
    assert violations([sneaky], ("pipelines", "jobs")) != []
    assert {"pipelines.config", "jobs.cli"} <= imports_of(sneaky)
