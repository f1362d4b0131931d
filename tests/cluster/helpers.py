"""Shared by the cluster tests: the CLI parser with `submit`, whether or not jobs/cli.py wires it yet."""
from __future__ import annotations

import argparse
import contextlib
import io
import re

from bench.paths import ROOT as REPO
from jobs.cli import build_parser
from jobs.submit import add_submit_parser


def submit_is_wired() -> bool:
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            build_parser().parse_args(["submit", "--config", "c.yaml"])
        except SystemExit:
            return False
    return True


def submit_parser() -> argparse.ArgumentParser:
    """jobs.cli's parser once `submit` is wired into it; until then one with `submit` alone."""
    if submit_is_wired():
        return build_parser()
    parser = argparse.ArgumentParser(prog="flexcurate")
    add_submit_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def pinned_ray_version() -> str:
    match = re.search(r'"ray\[[^\]]*\]==([0-9.]+)"', (REPO / "pyproject.toml").read_text())
    assert match, "pyproject.toml pins no ray version"
    return match.group(1)
