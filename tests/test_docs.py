"""Documentation: the site builds without warnings (mkdocs --strict: every page in the nav, every link and
every API reference resolves, the CLI reference is generated from the click commands), and the README
stays a product page."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_docs_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="the [docs] extra is not installed")
    pytest.importorskip("mkdocs_click", reason="the [docs] extra is not installed")
    pytest.importorskip("mkdocstrings", reason="the [docs] extra is not installed")
    site = tmp_path / "site"
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    cli = (site / "cli" / "index.html").read_text()
    # the reference is generated: every subcommand and an option only --help knows are on the page
    for command in ("adapt", "restore", "run", "train-care", "train-cyclegan", "info", "view", "demo"):
        assert f"ssai3d {command}" in cli, command
    assert "--region-memory" in cli
    api = (site / "api" / "index.html").read_text()
    assert "open_volume" in api and "RestoreSettings" in api


def test_readme_is_a_product_page_whose_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), f"README links to a missing {target}"
