"""The HTML report in a real browser: headless Chromium loads it, every image decodes and the
tables are there. Skipped, with the reason printed, where Chromium is not installed (``make test``
installs Debian's ``chromium`` package when it is absent)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from modelzip.reporting import write_report

CHROMIUM = next(
    (p for p in (shutil.which("chromium"), shutil.which("chromium-browser")) if p), None
)
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=10000",
)

# Runs after the page (and its data-URI images) loaded; writes what it saw into the DOM, which
# --dump-dom prints.
CHECK = """
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const result = {
    images: imgs.length,
    decoded: imgs.filter(i => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0).length,
    tables: document.querySelectorAll("table").length,
    rows: Array.from(document.querySelectorAll("table")).map(t => t.rows.length),
    titles: Array.from(document.querySelectorAll("h2")).map(h => h.textContent),
  };
  const pre = document.createElement("pre");
  pre.id = "browser-check";
  pre.textContent = JSON.stringify(result);
  document.body.appendChild(pre);
});
"""

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium is not installed (Debian: apt-get install chromium)",
)


def _browser_check(page: Path, profile: Path) -> dict:
    html = page.read_text().replace("</body>", f"<script>{CHECK}</script></body>")
    checked = page.with_name("checked.html")
    checked.write_text(html)
    proc = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", checked.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = re.search(r'<pre id="browser-check">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"no check result in the dumped DOM; chromium said: {proc.stderr[-2000:]}"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def test_report_loads_in_chromium_with_every_image_decoded(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    write_report(run_dir, out)
    seen = _browser_check(out, tmp_path / "profile")
    assert seen["images"] == 6
    assert seen["decoded"] == seen["images"]
    assert seen["tables"] >= 6 and all(rows >= 2 for rows in seen["rows"])
    assert "Pareto front" in seen["titles"] and "Sensitivity" in seen["titles"]


def test_a_broken_image_is_caught(run_dir: Path, tmp_path: Path) -> None:
    """The check can fail: an image whose PNG is corrupt does not decode."""
    out = tmp_path / "report.html"
    write_report(run_dir, out)
    text = out.read_text()
    out.write_text(text.replace("data:image/png;base64,iVBOR", "data:image/png;base64,AAAA", 1))
    seen = _browser_check(out, tmp_path / "profile")
    assert seen["decoded"] == seen["images"] - 1
