"""The report is a real page: headless Chromium renders report.html with its charts and pictures
(every image embedded, decoded to a non-zero size), not a blank page."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# Runs in the page after load: one line per image, "<alt> <naturalWidth>x<naturalHeight> <data-uri?>".
PROBE = """
<script>
window.addEventListener('load', () => {
  const lines = [...document.images].map(i =>
      `${i.alt.replace(/ /g, '_')} ${i.naturalWidth}x${i.naturalHeight} ${i.src.startsWith('data:image/png;base64,')}`);
  const out = document.createElement('pre'); out.id = 'probe'; out.textContent = lines.join('\\n');
  document.body.appendChild(out);
});
</script>
"""


def test_report_md_and_html_have_every_section(smoke_reference):
    report = smoke_reference / "report"
    markdown = (report / "report.md").read_text()
    page = (report / "report.html").read_text()
    for section in ("Models (val split)", "Stage timings", "Training curves", "Per-class IoU", "Latency vs accuracy",
                    "Accuracy-latency Pareto frontier",
                    "Val pictures"):
        assert section in markdown and section in page
    assert "src=\"data:image/png;base64," in page and "src=\"http" not in page  # self-contained
    for png in ("training_curves", "per_class_iou", "latency_vs_miou", "samples"):
        assert (report / f"{png}.png").stat().st_size > 1000


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (`make test` installs Debian's chromium "
                                              "when run as root; or: apt-get install chromium)")
def test_report_html_renders_its_charts_and_pictures_in_headless_chromium(smoke_reference, tmp_path):
    page = tmp_path / "report.html"
    page.write_text((smoke_reference / "report" / "report.html").read_text().replace("</body>", PROBE + "</body>"))
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom", page.as_uri()]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120).stdout
    probe = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert probe, f"the page did not finish loading in chromium:\n{dom[:2000]}"
    images = [line.split() for line in probe.group(1).strip().splitlines()]
    names = {alt for alt, _, _ in images}
    assert {"Training_curves", "Per-class_IoU", "Latency_vs_accuracy", "Val_pictures"} <= names
    for alt, size, embedded in images:
        width, height = map(int, size.split("x"))
        assert embedded == "true", f"{alt} is not embedded"
        assert width > 100 and height > 100, f"{alt} rendered as {size}: the image did not decode"
