"""The files that make this an open-source project people can join stay true: the licence
pyproject declares, `make help` for every target, hooks that download nothing, a changelog."""

from __future__ import annotations

import hashlib
import re
import subprocess
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent.parent
# sha256 of the Apache License 2.0 text as published (LICENSE-2.0.txt).
APACHE_2_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"


def test_the_licence_file_is_the_full_apache_2_text_pyproject_declares() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["license"] == "Apache-2.0"
    assert hashlib.sha256((ROOT / "LICENSE").read_bytes()).hexdigest() == APACHE_2_SHA256


def test_make_help_lists_every_target_with_one_line() -> None:
    makefile = (ROOT / "Makefile").read_text()
    phony = re.search(r"^\.PHONY: (.+)$", makefile, flags=re.MULTILINE)
    assert phony is not None
    targets = phony.group(1).split()

    out = subprocess.run(
        ["make", "--no-print-directory", "help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout

    listed = dict(re.findall(r"^  make (\S+) +(\S.*)$", out, flags=re.MULTILINE))
    assert sorted(listed) == sorted(targets)
    assert len(out.splitlines()) == len(targets)


def test_the_git_hooks_are_local_and_use_the_pinned_tools() -> None:
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    hooks = [hook for repo in config["repos"] for hook in repo["hooks"]]
    # No hook repository is cloned and no tool environment is built when a hook runs.
    assert [repo["repo"] for repo in config["repos"]] == ["local"]
    assert {hook["language"] for hook in hooks} == {"unsupported"}
    entries = " ".join(hook["entry"] for hook in hooks)
    for tool in ("ruff check", "ruff format", "mypy", "lint-imports", "makemigrations --check"):
        assert tool in entries
    assert all(".venv/bin/" in hook["entry"] for hook in hooks)
    assert "pre-commit==" in (ROOT / "requirements/dev.in").read_text()


def test_the_changelog_keeps_an_unreleased_section() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "keepachangelog.com" in changelog
    assert re.search(r"^## \[Unreleased\]$", changelog, flags=re.MULTILINE)
