"""``--html`` (``report.html``): one self-contained file per run, opening with the verdict and
the advice, then the tables and the figures.

Checked with a real HTML parser (every image decodes, nothing is fetched, every implementation
of the run appears, the rows at risk carry their exact and returned losses) and rendered by a
real headless browser (Debian's ``chromium``, which ``.ci/run`` installs): the screenshot is
not blank and shows the verdict's colour. Runs are small and real (module fixtures).
"""

from __future__ import annotations

import base64
import io
import math
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from xentaudit.audit import audit
from xentaudit.check import check_file
from xentaudit.cli import cli
from xentaudit.flags import CHECK_FAIL_ON
from xentaudit.report import html as html_report
from xentaudit.sweep import sweep as run_sweep

FIXTURE = Path(__file__).parent.parent / "fixtures" / "seed_scale10.npz"
IMPLS = ["naive", "clipped", "tf_softmax_xent"]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"  # Debian's package


class Page(HTMLParser):
    """What a browser would load and show: elements in order, their attributes, the text."""

    def __init__(self, document: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.styles: list[str] = []
        self._in_style = False
        self.feed(document)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}))
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        (self.styles if self._in_style else self.text).append(data)

    @property
    def words(self) -> str:
        return " ".join(" ".join(self.text).split())

    def images(self) -> list[Image.Image]:
        out = []
        for tag, attrs in self.elements:
            if tag == "img":
                head, _, data = attrs["src"].partition(",")
                assert head == "data:image/png;base64"
                image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
                image.load()  # decodes every pixel: a truncated PNG raises
                out.append(image)
        return out


@pytest.fixture(scope="module")
def checked() -> str:
    result = check_file(FIXTURE, impls=IMPLS, modes=("eager",))
    return html_report.render_check(result, CHECK_FAIL_ON)


@pytest.fixture(scope="module")
def compared() -> str:
    x = 10.0 * np.array([[3.0, 1.0, 1.0], [-1.0, 2.0, 5.0]])
    y = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    return html_report.render(audit(x, y, impls=IMPLS, modes=("eager",)), title="compare")


@pytest.fixture(scope="module")
def swept():
    return run_sweep(
        scales=[0.3, 3.0, 30.0],
        dtypes=["float16", "float32"],
        impls=["naive", "tf_softmax_xent"],
        patterns=["seed"],
        modes=("eager",),
    )


@pytest.fixture(params=["check", "compare", "sweep"])
def report(request) -> tuple[str, list[str]]:
    """Each command's report, and the implementations its run audited."""
    if request.param == "check":
        return request.getfixturevalue("checked"), IMPLS
    if request.param == "compare":
        return request.getfixturevalue("compared"), IMPLS
    return html_report.render_sweep(request.getfixturevalue("swept"), ()), [
        "naive",
        "tf_softmax_xent",
    ]


def test_a_report_fetches_nothing(report) -> None:
    document, _ = report
    page = Page(document)
    tags = {tag for tag, _ in page.elements}
    assert not tags & {"script", "link", "iframe", "object", "embed", "frame", "base", "source"}
    for tag, attrs in page.elements:
        for name, value in attrs.items():
            if name in ("src", "href", "srcset", "poster", "action", "background"):
                assert value.startswith("data:image/png;base64,"), (tag, name, value[:40])
            else:
                assert "url(" not in value and "//" not in value, (tag, name, value)
    assert not any("url(" in s or "@import" in s or "//" in s for s in page.styles)
    assert "http" not in page.words  # no link in the text either


def test_every_image_decodes_and_every_implementation_appears(report) -> None:
    document, impls = report
    page = Page(document)
    images = page.images()
    assert images or "compare" in page.words
    assert all(image.width > 300 and image.height > 200 for image in images)
    for impl in impls:
        assert impl in page.words


def test_the_report_opens_with_the_verdict_and_the_advice(checked) -> None:
    page = Page(checked)
    body = [
        tag for tag, _ in page.elements if tag not in ("html", "head", "meta", "title", "style")
    ]
    assert body[:3] == ["body", "h1", "div"]
    verdict = page.elements[[t for t, _ in page.elements].index("div")][1]
    assert verdict["style"] == f"background: {html_report.STATUS_COLOURS['fail']}"
    words = page.words
    order = [
        words.index("FAIL"),
        words.index("What the flags mean"),
        words.index("Rows at risk"),
        words.index("Results"),
        words.index("Per-row relative loss error"),
    ]
    assert order == sorted(order)
    assert "Instead: use a fused loss on logits" in words  # divergent's advice


def test_rows_at_risk_show_the_exact_and_the_returned_loss(checked) -> None:
    page = Page(checked)
    cells = [t.strip() for t in page.text if t.strip()]
    start = cells.index("Rows at risk")
    row = cells[cells.index("clipped eps=1e-07 float32 eager", start) :][:5]
    assert row[:2] == ["clipped eps=1e-07 float32 eager", "1"]
    # row 1 at scale 10: logits [-10, 20, 50], label 1: exact loss 30 + log1p(e^-30 + e^-60)
    assert float(row[2]) == pytest.approx(30 + math.log1p(math.exp(-30)), rel=1e-9)
    # the clip returns -ln(1e-7) = 16.118..., rounded to float32 twice (eps and the log)
    assert float(row[3]) == pytest.approx(-math.log(1e-7), rel=2 * 2.0**-24)
    assert row[4] == "divergent, grad-vanish"


def test_a_sweep_is_judged_only_on_its_fail_on_flags(swept) -> None:
    def colour(document: str) -> str:
        return next(a["style"] for t, a in Page(document).elements if t == "div")

    assert html_report.STATUS_COLOURS["info"] in colour(html_report.render_sweep(swept, ()))
    # naive turns NaN on the seed (float16 from scale 2.22): a --fail-on nan sweep fails
    failing = html_report.render_sweep(swept, ("nan",))
    assert html_report.STATUS_COLOURS["fail"] in colour(failing)
    assert "A --fail-on flag (nan) fires" in Page(failing).words
    passing = html_report.render_sweep(swept, ("grad-blowup",))
    assert html_report.STATUS_COLOURS["pass"] in colour(passing)


def test_check_html_from_the_command_line_and_the_step_summary_points_to_it(tmp_path) -> None:
    summary = tmp_path / "summary.md"
    target = tmp_path / "report.html"
    result = CliRunner().invoke(
        cli,
        ["check", str(FIXTURE), "--html", str(target), "--impl", "clipped", "--mode", "eager"],
        env={"GITHUB_STEP_SUMMARY": str(summary)},
    )
    assert result.exit_code == 1, result.output  # clipped diverges on row 1
    assert Page(target.read_text(encoding="utf-8")).images()
    text = summary.read_text(encoding="utf-8")
    assert text.startswith("### xentaudit check")
    assert text.rstrip().splitlines()[-1].startswith(f"Full report: `{target}` (HTML")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "summary.md"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--html", "report.txt"], "Invalid value for '--html': 'report.txt' does not end in"),
        (["--html", "out/report.html"], "--html: no such directory: out"),
        (["--html", "r.html", "--output", "r.html"], "--output and --html name the same file"),
    ],
)
def test_a_bad_html_file_is_one_line_exit_2_and_nothing_written(
    tmp_path, monkeypatch, no_audit, args: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["check", str(FIXTURE), *args])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert list(tmp_path.iterdir()) == []


def test_compare_html_from_the_command_line(tmp_path) -> None:
    target = tmp_path / "compare.html"
    args = ["compare", "--html", str(target), "--impl", "clipped", "--mode", "eager"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output  # compare's --fail-on defaults to none
    assert "clipped" in Page(target.read_text(encoding="utf-8")).words


def screenshot(page: Path, tmp_path: Path) -> np.ndarray:
    """The first screen of ``page`` as headless Chromium renders it (RGB pixels)."""
    shot = tmp_path / "shot.png"
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1200,900",
        page.as_uri(),
    ]
    subprocess.run(command, capture_output=True, timeout=120, check=True)
    with Image.open(shot) as image:
        return np.asarray(image.convert("RGB"))


@pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason="no browser: chromium is not installed (Debian: apt-get install chromium; .ci/run "
    "installs it)",
)
def test_a_browser_renders_the_check_report_with_its_verdict_colour(checked, tmp_path) -> None:
    page = tmp_path / "report.html"
    page.write_text(checked, encoding="utf-8")
    pixels = screenshot(page, tmp_path)
    assert pixels.shape == (900, 1200, 3)
    assert pixels.std() > 20  # not blank: text, a banner, tables
    red = np.array([int(html_report.STATUS_COLOURS["fail"][i : i + 2], 16) for i in (1, 3, 5)])
    banner = (np.abs(pixels.astype(int) - red).max(axis=-1) <= 8).sum()
    assert banner > 20_000  # the FAIL banner: a full-width block of the verdict's colour
    green = np.array([int(html_report.STATUS_COLOURS["pass"][i : i + 2], 16) for i in (1, 3, 5)])
    assert (np.abs(pixels.astype(int) - green).max(axis=-1) <= 8).sum() < 100
