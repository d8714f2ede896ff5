"""`sweep --plot` and ``report.plot``: the figures are opened and checked for what can go wrong
(size, every implementation's line present, NaN points in the NaN band, the rounding level where
the dtype puts it, no label over another), not only for existing.

A small real sweep (module fixture) gives the curves; the layout test uses a hand-built sweep
with every registered implementation, the size of the default run's legend, without running one.
"""

from __future__ import annotations

import io
import itertools
import math
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from PIL import Image

from xentaudit.cli import cli
from xentaudit.impls import REGISTRY
from xentaudit.report import plot
from xentaudit.results import PatternInfo, Sweep, SweepCell
from xentaudit.sweep import sweep as run_sweep

SCALES = [0.3, 3.0, 30.0, 300.0]
IMPLS = ["naive", "tf_softmax_xent"]
DTYPES = ["float16", "float32"]


@pytest.fixture(scope="module")
def small_sweep() -> Sweep:
    return run_sweep(scales=SCALES, dtypes=DTYPES, impls=IMPLS, patterns=["seed"], modes=("eager",))


def rgb(colour: str) -> np.ndarray:
    return np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)], dtype=float)


def pixels_of(image: np.ndarray, colour: str, box: tuple[int, int, int, int]) -> int:
    """How many pixels in ``box`` (left, top, right, bottom, image rows from the top) are
    ``colour`` to within 40 of 255 per channel (antialiasing blends edges, not centres)."""
    left, top, right, bottom = box
    region = image[top:bottom, left:right, :3].astype(float)
    return int((np.abs(region - rgb(colour)).max(axis=-1) < 40).sum())


def drawn(figure: Figure) -> Figure:
    """``figure`` laid out and drawn by Agg, as its PNG is: the boxes are then the PNG's."""
    FigureCanvasAgg(figure).draw()
    return figure


def pixel_box(figure: Figure, label: str) -> tuple[int, int, int, int]:
    """The box of the axes labelled ``label`` in the PNG's pixels (rows counted from the top),
    2 pixels inside its frame."""
    (ax,) = [a for a in figure.axes if a.get_label() == label]
    x0, y0, x1, y1 = ax.get_window_extent().extents
    height = figure.bbox.height
    return round(x0) + 2, round(height - y1) + 2, round(x1) - 2, round(height - y0) - 2


def test_the_png_is_the_figure_at_its_size_with_every_line(small_sweep) -> None:
    figure = drawn(plot.sweep_figure(small_sweep))
    png = plot.render_sweep(small_sweep, ".png")
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    width, height = (figure.get_size_inches() * plot.DPI).round().astype(int)
    assert image.shape[:2] == (height, width)
    assert 900 <= width <= 2000 and 700 <= height <= 1200  # readable, not a poster
    for kind, dtype, impl in itertools.product(("loss", "grad"), DTYPES, IMPLS):
        box = pixel_box(figure, f"{kind} {dtype}")
        # at least part of a marker: a 5-point marker at 100 dpi is ~40 pixels, and naive's
        # float16 loss has one finite point, its float32 ones lie under tf_softmax_xent's;
        # a line not drawn, or in another colour, leaves none
        assert pixels_of(image, plot.style(impl).colour, box) > 10, (kind, dtype, impl)


def test_naive_float16_nan_lands_in_the_nan_band(small_sweep) -> None:
    # float16's largest number is 65504 < exp(5 x 3): the seed row [-1, 2, 5] overflows from
    # scale 3 on, and the naive loss is inf / inf = NaN there; the fused loss never is.
    naive = [c for c in small_sweep.cells if (c.impl, c.dtype) == ("naive", "float16")]
    assert [math.isnan(c.max_rel_err) for c in naive] == [5 * s > math.log(65504) for s in SCALES]
    figure = drawn(plot.sweep_figure(small_sweep))
    image = np.asarray(Image.open(io.BytesIO(plot.render_sweep(small_sweep, ".png"))))
    band = pixel_box(figure, "band loss float16")
    assert pixels_of(image, plot.style("naive").colour, band) > 50
    assert pixels_of(image, plot.style("tf_softmax_xent").colour, band) == 0
    # and NaN is not drawn in the panel itself: no naive point above the last finite one
    (ax,) = [a for a in figure.axes if a.get_label() == "loss float16"]
    (line,) = [ln for ln in ax.get_lines() if ln.get_gid() == "line-loss-float16-naive"]
    assert np.isnan(line.get_ydata()[1:]).all() and np.isfinite(line.get_ydata()[0])


def test_the_svg_names_every_line_band_point_and_rounding_level(small_sweep) -> None:
    root = ET.fromstring(plot.render_sweep(small_sweep, ".svg"))
    ids = {element.get("id") for element in root.iter()}
    for kind, dtype, impl in itertools.product(("loss", "grad"), DTYPES, IMPLS):
        assert f"line-{kind}-{dtype}-{impl}" in ids
        assert f"u-{kind}-{dtype}" in ids
    assert "nonfinite-loss-float16-naive" in ids and "nonfinite-loss-float32-naive" in ids
    assert not any(i and i.startswith("nonfinite-") and "tf_softmax_xent" in i for i in ids)
    # naive breaks on the loss in both dtypes (NaN at 2.22 and 14.6 on the seed)
    assert {"break-loss-float16-naive", "break-loss-float32-naive"} <= ids


def test_the_rounding_level_is_the_unit_roundoff_of_each_dtype(small_sweep) -> None:
    figure = plot.sweep_figure(small_sweep)
    levels = {
        line.get_gid(): line.get_ydata()[0]
        for ax in figure.axes
        for line in ax.get_lines()
        if (line.get_gid() or "").startswith("u-")
    }
    # u = 2^-p with p = 11 (float16) and 24 (float32) significand bits
    assert levels == {
        "u-loss-float16": 2.0**-11,
        "u-grad-float16": 2.0**-11,
        "u-loss-float32": 2.0**-24,
        "u-grad-float32": 2.0**-24,
    }


def test_pdf_is_a_pdf(small_sweep) -> None:
    assert plot.render_sweep(small_sweep, ".pdf").startswith(b"%PDF-")


def every_implementation_sweep() -> Sweep:
    """Every registered implementation (clipped at three epsilons) in four dtypes, float16 also
    under the longest Keras policy name, and both modes; NaN from scale 100 for half of them
    and graph runs apart for some: the default run's legend, lanes and panels and the longest
    titles, built by hand."""
    cells = []
    variants = [(n, None) for n in REGISTRY if n != "clipped"]
    variants += [("clipped", e) for e in (1e-7, 1e-12, 1e-30)]
    scales = (0.1, 1.0, 10.0, 100.0, 1e3, 1e4)
    panels = [(d, "float32") for d in ("float16", "bfloat16", "float32", "float64")]
    panels.append(("float16", "mixed_bfloat16"))
    for i, (impl, eps) in enumerate(variants):
        for (dtype, policy), mode, scale in itertools.product(panels, ("eager", "graph"), scales):
            error = math.nan if i % 2 and scale >= 100 else 1e-3 * (10.0 if mode == "graph" else 1)
            cells.append(
                SweepCell(
                    "seed", impl, eps, dtype, mode, scale, dtype, 1.0, 1.0, error, error, (), policy
                )
            )
    return Sweep(scales, (PatternInfo("seed", "the seed", 2, 3),), tuple(cells), ())


@pytest.mark.parametrize("which", ["every implementation", "small"])
def test_no_label_overlaps_another_at_the_default_size(which: str, request) -> None:
    if which == "small":
        figure = drawn(plot.sweep_figure(request.getfixturevalue("small_sweep")))
    else:
        figure = drawn(plot.sweep_figure(every_implementation_sweep()))
    renderer = figure.canvas.get_renderer()
    # tick labels outside the view keep stale positions: only those of the drawn ticks count
    # (Axis._update_ticks returns them: what Axis.draw draws)
    ticks = {
        id(label)
        for ax in figure.axes
        for axis in (ax.xaxis, ax.yaxis)
        for tick in axis.get_major_ticks() + axis.get_minor_ticks()
        for label in (tick.label1, tick.label2)
    }
    drawn_ticks = {
        id(label)
        for ax in figure.axes
        for axis in (ax.xaxis, ax.yaxis)
        for tick in axis._update_ticks()
        for label in (tick.label1, tick.label2)
    }
    boxes = [
        (t, t.get_window_extent(renderer))
        for t in figure.findobj(Text)
        if t.get_visible() and t.get_text().strip() and (id(t) not in ticks or id(t) in drawn_ticks)
    ]
    assert len(boxes) > 40  # titles, axis labels, ticks, the legend's entries
    overlapping = [
        (a.get_text(), b.get_text())
        for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2)
        if box_a.overlaps(box_b)
    ]
    assert overlapping == []
    # the legend (its lines and markers too) lies outside every panel, title and label
    legend = figure.legends[0]
    box = legend.get_window_extent(renderer)
    assert not any(box.overlaps(ax.get_window_extent(renderer)) for ax in figure.axes)
    own = {id(t) for t in legend.get_texts()}
    assert not [t.get_text() for t, b in boxes if box.overlaps(b) and id(t) not in own]


def test_every_implementation_keeps_one_style_and_no_two_share_it() -> None:
    styles = [plot.style(name) for name in REGISTRY]
    assert len(set(styles)) == len(styles)
    assert plot.style("my/loss.py:fn") == plot.style("my/loss.py:fn")
    assert plot.style("my/loss.py:fn").colour in plot.COLOURS


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--plot", "sweep.txt"], "Invalid value for '--plot': 'sweep.txt' does not end in"),
        (["--plot", "missing/sweep.png"], "--plot: no such directory: missing"),
        (["--html", "sweep.png"], "Invalid value for '--html': 'sweep.png' does not end in"),
        (["--plot", "a.svg", "--write-baseline", "a.svg"], "name the same file"),
    ],
)
def test_a_bad_plot_file_is_one_line_exit_2_and_nothing_written(
    tmp_path, monkeypatch, args: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys.modules["xentaudit.sweep"], "sweep", _no_sweep)
    result = CliRunner().invoke(cli, ["sweep", *args])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert list(tmp_path.iterdir()) == []


def _no_sweep(**kwargs: object) -> None:
    raise AssertionError("the sweep ran before its output files were checked")


def test_sweep_plot_writes_the_figure(tmp_path) -> None:
    target = tmp_path / "sweep.png"
    args = ["sweep", "--plot", str(target), "--scales", "0.3,30", "--dtype", "float16"]
    args += ["--impl", "naive", "--pattern", "seed", "--mode", "eager"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "float16" in result.stdout  # the table report still goes to stdout
    with Image.open(target) as image:
        assert image.format == "PNG" and image.width > 500
    assert [p.name for p in tmp_path.iterdir()] == ["sweep.png"]  # no temporary file left


def test_without_matplotlib_a_figure_is_one_line_naming_the_install(tmp_path) -> None:
    code = (
        "import sys\n"
        "sys.modules['matplotlib'] = None  # as if not installed: importing it fails\n"
        "from xentaudit.cli import cli\n"
        "for args in (['sweep', '--plot', 'x.png'], ['sweep', '--html', 'x.html'],\n"
        "             ['compare', '--html', 'x.html'], ['check', 'f.npz', '--html', 'x.html']):\n"
        "    try:\n"
        "        cli(args)\n"
        "    except SystemExit as exc:\n"
        "        print(exc.code)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.split() == ["2"] * 4
    errors = out.stderr.strip().splitlines()
    assert len(errors) == 4
    assert all("plots need matplotlib" in e and "pip install" in e for e in errors), errors
    assert list(tmp_path.iterdir()) == []


def test_a_variant_run_only_as_a_graph_is_drawn_as_any_other() -> None:
    """Hollow markers mean a graph run drawn apart from its eager run where they differ; a
    variant that ran as a graph only (JAX in the default sweep's training modes) is one
    ordinary line, and the legend says nothing of hollow markers."""
    cells = tuple(
        SweepCell("seed", impl, None, "float32", mode, s, "float32", 1.0, 1.0, 1e-3, 1e-3, ())
        for impl, mode in (("naive", "eager"), ("optax_softmax_xent", "graph"))
        for s in (1.0, 10.0)
    )
    sweep = Sweep((1.0, 10.0), (PatternInfo("seed", "the seed", 2, 3),), cells, ())
    figure = plot.sweep_figure(sweep)
    texts = [t.get_text() for t in figure.legends[0].get_texts()]
    assert not [t for t in texts if "hollow" in t]
    faces = {
        line.get_label(): line.get_markerfacecolor()
        for ax in figure.axes
        for line in ax.get_lines()
        if line.get_label().endswith(("naive", "optax_softmax_xent"))
    }
    assert faces and "white" not in faces.values()
    assert "w" not in faces.values()
