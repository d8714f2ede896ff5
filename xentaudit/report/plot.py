"""Figures: the sweep's error curves (``sweep --plot``, the HTML report) and the histogram of
``check``'s per-row relative errors (the HTML report).

Figures are built on ``matplotlib.figure.Figure`` without pyplot, so no GUI backend or display
is ever touched: PNG is drawn by Agg, SVG and PDF by matplotlib's own writers. This module
imports matplotlib when it is imported, and ``cli.py`` imports it only when a figure is asked
for. Renderers return bytes and never write.

The sweep figure (error against input, as Herbie's report draws it): one column of panels per
dtype, x the logit scale, y the error on log axes; the loss's relative error
|L - exact| / max(|exact|, 1) on the first row, the gradient's max |G - g| on the second; each
curve is the worst over the swept patterns at each scale; NaN and inf sit in a band above each
panel, one lane per implementation; a vertical bar on a curve (or in its lane) marks the
breaking point; the dashed line is the dtype's unit roundoff u = 2^-p.
"""

from __future__ import annotations

import io
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from xentaudit.dtypes import dtype_label, get_format
from xentaudit.errors import ConfigError
from xentaudit.impls import REGISTRY
from xentaudit.results import (
    DISAGREE_FACTOR,
    DISAGREE_ULPS,
    Check,
    CheckResult,
    Sweep,
    SweepCell,
    clips_with_eps,
    several_eps,
    variant_label,
)

try:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator, NullLocator
except ImportError as exc:  # a broken install: matplotlib is a core dependency
    raise ConfigError(
        f"plots need matplotlib, which cannot be imported ({exc}); install it: "
        "pip install 'matplotlib>=3.7'"
    ) from None

SUFFIXES = (".png", ".svg", ".pdf")
DPI = 100
# Ten colours that stay apart for common colour blindness (matplotlib's tab10) and ten markers;
# an implementation's pair comes from its place in the registry, so it is the same in every
# panel and every run (a user's loss: from a checksum of its name).
COLOURS = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#7f7f7f",
)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "p")
EPS_LINESTYLES = ("-", "--", "-.", ":")  # `clipped` at its 1st, 2nd, ... epsilon of the run
BAND_COLOUR = "#eeeeee"
QUANTITIES = {  # row of panels -> (SweepCell field, axis label)
    "loss": ("max_rel_err", "loss: |L - exact| / max(|exact|, 1)"),
    "grad": ("grad_max_abs_err", "gradient: max |G - g|"),
}
FLOOR_BELOW_U = 1e-3  # the y axis starts this far below the unit roundoff; 0 is drawn there


@dataclass(frozen=True)
class Style:
    """How one implementation is drawn: the same in every panel of every figure."""

    colour: str
    marker: str


def style(impl: str) -> Style:
    """The colour and marker of ``impl``: from its registry index, distinct pairs for the
    first 100 (a colour and a marker never both repeat)."""
    names = list(REGISTRY)
    i = names.index(impl) if impl in names else len(names) + zlib.crc32(impl.encode()) % 80
    return Style(COLOURS[i % 10], MARKERS[(i % 10 + i // 10) % 10])


def unit_roundoff(dtype: str) -> float:
    """u = 2^-p: the largest relative error of rounding to the dtype (half its eps)."""
    return get_format(dtype).eps / 2


# --- the sweep -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Curve:
    """One line of a panel: a variant of an implementation in one or both modes; ``apart``:
    one of its two modes, drawn apart from the other where they differ."""

    impl: str
    eps: float | None
    modes: tuple[str, ...]
    label: str
    values: tuple[float | None, ...]  # per sweep scale: the worst over patterns; None: not run
    apart: bool = False


def _worst(cells: Sequence[SweepCell], field: str) -> float | None:
    """The worst error over patterns: NaN before inf before the largest finite error."""
    values = [getattr(c, field) for c in cells]
    if not values:
        return None
    if any(math.isnan(v) for v in values):
        return math.nan
    return max(values)


def _apart(a: Sequence[float | None], b: Sequence[float | None], eps: float) -> bool:
    """Whether two curves disagree as ``compare`` says frameworks do: finite against not, or
    errors more than DISAGREE_FACTOR apart with the larger past DISAGREE_ULPS eps (smaller
    differences are rounding noise, and would double the legend)."""
    for x, y in zip(a, b, strict=True):
        if x is None or y is None:
            continue
        if math.isfinite(x) != math.isfinite(y) or math.isnan(x) != math.isnan(y):
            return True
        if math.isfinite(x) and max(x, y) > max(DISAGREE_ULPS * eps, DISAGREE_FACTOR * min(x, y)):
            return True
    return False


def _curves(sweep: Sweep, panel: tuple[str, str], kind: str) -> list[_Curve]:
    """The curves of one panel (dtype and policy) and quantity: a variant's graph run drawn
    apart only where it differs from its eager run."""
    field = QUANTITIES[kind][0]
    variants = list(dict.fromkeys((c.impl, c.eps) for c in sweep.cells))
    with_eps = several_eps(variants)
    curves = []
    for impl, eps in variants:
        cells = [
            c for c in sweep.cells if (c.impl, c.eps, c.dtype, c.policy) == (impl, eps, *panel)
        ]
        modes = list(dict.fromkeys(c.mode for c in cells))
        by_mode = {
            m: tuple(
                _worst([c for c in cells if c.mode == m and c.scale == s], field)
                for s in sweep.scales
            )
            for m in modes
        }
        label = variant_label(impl, eps, with_eps)
        if len(modes) == 2 and _apart(*by_mode.values(), get_format(panel[0]).eps):
            curves += [
                _Curve(impl, eps, (m,), f"{label} ({m})", v, apart=True) for m, v in by_mode.items()
            ]
        elif modes:
            curves.append(_Curve(impl, eps, tuple(modes), label, by_mode[modes[0]]))
    return curves


def _breaking_scale(sweep: Sweep, curve: _Curve, panel: tuple[str, str], kind: str) -> float | None:
    """The earliest breaking point of a curve's variant, over its modes and the patterns."""
    scales = [
        p.scale
        for p in sweep.breaking_points
        if (p.impl, p.eps, p.dtype, p.policy, p.kind) == (curve.impl, curve.eps, *panel, kind)
        and p.mode in curve.modes
        and p.scale is not None
    ]
    return min(scales, default=None)


def _on_curve(scales: Sequence[float], values: Sequence[float], x: float) -> float | None:
    """The curve's height at scale ``x``, interpolated on the log axes between the grid scales
    around it; None where a neighbour is not finite (the break is then drawn in the band)."""
    right = next((i for i, s in enumerate(scales) if s >= x), len(scales) - 1)
    left = max(right - 1, 0)
    if left == right or scales[right] == x:  # on a grid scale, or broken from the first one
        return values[right] if math.isfinite(values[right]) else None
    ya, yb = values[left], values[right]
    if not (math.isfinite(ya) and math.isfinite(yb)):
        return None
    t = (math.log(x) - math.log(scales[left])) / (math.log(scales[right]) - math.log(scales[left]))
    return math.exp((1 - t) * math.log(ya) + t * math.log(yb))


def _panel_title(panel: tuple[str, str], kind: str) -> str:
    dtype = panel[0]
    p = get_format(dtype).precision
    return f"{dtype_label(*panel)}: {kind}\nu = 2^-{p} = {unit_roundoff(dtype):.2g}"


def _draw_panel(
    ax: Axes,
    band: Axes,
    sweep: Sweep,
    panel: tuple[str, str],
    kind: str,
    lanes: dict[str, int],
    curves: list[_Curve],
) -> None:
    """One dtype and quantity: the curves on ``ax``, their NaN/inf points in ``band``."""
    dtype = panel[0]
    u = unit_roundoff(dtype)
    floor = u * FLOOR_BELOW_U
    scales = list(sweep.scales)
    top = 10.0
    for curve in curves:
        look = style(curve.impl)
        hollow = curve.apart and curve.modes == ("graph",)  # not a variant run as a graph only
        # zero and sub-floor errors sit on the floor; NaN, inf and not run leave a gap
        shown = [
            max(v, floor) if v is not None and math.isfinite(v) else math.nan for v in curve.values
        ]
        top = max([top, *(3 * v for v in shown if math.isfinite(v))])
        tag = f"{kind}-{dtype_label(*panel)}-{curve.label}".replace(" ", "_")
        ax.plot(
            scales,
            shown,
            color=look.colour,
            marker=look.marker,
            linestyle=_linestyle(sweep, curve.impl, curve.eps),
            markersize=5,
            linewidth=1.4,
            markerfacecolor="white" if hollow else look.colour,
            label=curve.label,
            gid=f"line-{tag}",
            zorder=3,
        )
        lane = lanes.get(curve.label)
        nonfinite = [
            s
            for s, v in zip(scales, curve.values, strict=True)
            if v is not None and not math.isfinite(v)
        ]
        if lane is not None and nonfinite:
            band.plot(
                nonfinite,
                [lane] * len(nonfinite),
                linestyle="none",
                color=look.colour,
                marker=look.marker,
                markersize=5,
                markerfacecolor="white" if hollow else look.colour,
                gid=f"nonfinite-{tag}",
                zorder=3,
            )
        at = _breaking_scale(sweep, curve, panel, kind)
        if at is None:
            continue
        y = _on_curve(scales, shown, at)
        target, height = (ax, max(y, floor)) if y is not None else (band, lane)
        if height is None:
            continue
        target.plot(
            [at],
            [height],
            linestyle="none",
            marker="|",
            markersize=14,
            markeredgewidth=2.5,
            color=look.colour,
            gid=f"break-{tag}",
            zorder=4,
        )
    ax.axhline(u, color="black", linestyle="--", linewidth=0.9, zorder=2, gid=f"u-{kind}-{dtype}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    # Decades only (the band shares the x axis): a log axis' minor ticks, some 80 a panel, are
    # a Tick each (a line and an empty label), and the constrained layout measuring them took
    # 60 % of the time to draw the figure of TensorFlow's default sweep (benchmarks/plot_speed.py)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_minor_locator(NullLocator())
    ax.set_ylim(floor, top)
    ax.set_xlim(scales[0] / 1.5, scales[-1] * 1.5)
    ax.grid(True, which="major", color="#dddddd", linewidth=0.6)
    ax.set_xlabel("logit scale")
    band.set_facecolor(BAND_COLOUR)
    band.set_ylim(-0.7, max(len(lanes), 1) - 0.3)
    band.set_yticks([])
    band.tick_params(axis="x", labelbottom=False)
    band.set_title(_panel_title(panel, kind), fontsize=10, loc="left")


def sweep_figure(sweep: Sweep) -> Figure:
    """The sweep as a figure: for each dtype (x policy) a column with the loss panel over the
    gradient panel, each topped by its NaN/inf band; one legend outside the panels."""
    panels = list(dict.fromkeys((c.dtype, c.policy) for c in sweep.cells))
    rows = {kind: {p: _curves(sweep, p, kind) for p in panels} for kind in QUANTITIES}
    lanes = {}
    for kind, by_panel in rows.items():
        broken = [
            c.label
            for p in panels
            for c in by_panel[p]
            if any(v is not None and not math.isfinite(v) for v in c.values)
        ]
        lanes[kind] = {label: i for i, label in enumerate(reversed(list(dict.fromkeys(broken))))}
    # a lane per implementation that turns NaN or inf, up to a band of 1.2 inches
    band_heights = [min(0.3 + 0.09 * max(len(lanes[k]), 1), 1.2) for k in QUANTITIES]
    main = 3.0
    ncols = max(len(panels), 1)
    figure = Figure(
        figsize=(3.7 * ncols + 3.2, sum(band_heights) + 2 * main + 1.6),
        dpi=DPI,
        layout="constrained",
    )
    grid = figure.add_gridspec(
        4, ncols, height_ratios=[band_heights[0], main, band_heights[1], main]
    )
    patterns = ", ".join(p.name for p in sweep.patterns)
    several = "s" * (len(sweep.patterns) > 1)
    modes = " and ".join(dict.fromkeys(c.mode for c in sweep.cells))
    figure.suptitle(
        f"xentaudit sweep: error against logit scale, worst over pattern{several} {patterns} "
        f"({modes})",
        fontsize=12,
        x=0.01,
        ha="left",
    )
    curves = [c for by_panel in rows.values() for cs in by_panel.values() for c in cs]
    for col, panel in enumerate(panels):
        for r, kind in enumerate(QUANTITIES):
            ax = figure.add_subplot(grid[2 * r + 1, col])
            band = figure.add_subplot(grid[2 * r, col], sharex=ax)
            ax.set_label(f"{kind} {dtype_label(*panel)}")
            band.set_label(f"band {kind} {dtype_label(*panel)}")
            _draw_panel(ax, band, sweep, panel, kind, lanes[kind], rows[kind][panel])
            if col == 0:
                ax.set_ylabel(QUANTITIES[kind][1])
                band.set_ylabel("NaN\ninf", rotation=0, ha="right", va="center", fontsize=9)
    figure.legend(
        handles=_legend_handles(sweep, any(c.apart for c in curves)),
        loc="outside right center",
        fontsize=8,
        frameon=False,
    )
    return figure


def _legend_handles(sweep: Sweep, graph_apart: bool) -> list[Line2D]:
    """One entry per variant (its style is the same in every panel and both modes), then what
    the marks mean (hollow markers: where a graph run is drawn apart, ``graph_apart``)."""
    variants = list(dict.fromkeys((c.impl, c.eps) for c in sweep.cells))
    with_eps = several_eps(variants)
    handles = []
    for impl, eps in variants:
        look = style(impl)
        handles.append(
            Line2D(
                [],
                [],
                color=look.colour,
                marker=look.marker,
                markersize=5,
                linestyle=_linestyle(sweep, impl, eps),
                label=variant_label(impl, eps, with_eps),
            )
        )
    if graph_apart:
        handles.append(
            Line2D(
                [],
                [],
                color="black",
                marker="o",
                markersize=5,
                markerfacecolor="white",
                label="hollow: the graph run,\nwhere it differs from eager",
            )
        )
    return [
        *handles,
        Line2D([], [], color="black", linestyle="--", label="unit roundoff u of the dtype"),
        Line2D(
            [],
            [],
            color="black",
            linestyle="none",
            marker="|",
            markersize=12,
            markeredgewidth=2.5,
            label="breaking point",
        ),
        Line2D(
            [],
            [],
            color=BAND_COLOUR,
            linestyle="none",
            marker="s",
            markersize=10,
            label="grey band: NaN or inf",
        ),
    ]


def _linestyle(sweep: Sweep, impl: str, eps: float | None) -> str:
    """Solid, but for an implementation that clips with --eps swept at several epsilons
    (``clipped``, ``clipped_sigmoid``): one line style per epsilon."""
    clip_eps = list(dict.fromkeys(c.eps for c in sweep.cells if c.impl == impl))
    if not clips_with_eps(impl) or len(clip_eps) < 2:
        return "-"
    return EPS_LINESTYLES[clip_eps.index(eps) % len(EPS_LINESTYLES)]


def render_sweep(sweep: Sweep, suffix: str) -> bytes:
    """The sweep figure as ``suffix`` (.png, .svg or .pdf) bytes."""
    return _bytes(sweep_figure(sweep), suffix)


# --- check -----------------------------------------------------------------------------------


def check_histogram(check: Check) -> Figure:
    """A small bar chart per result of ``check``: how many rows fall in each bucket of the
    relative loss error (``check.HISTOGRAM``); eager and graph share a panel where they agree."""
    shown: dict[tuple, tuple[str, CheckResult]] = {}
    for r in check.results:
        key = (r.impl, r.eps, r.dtype, r.policy, r.labels, tuple(r.error_histogram.items()))
        if key in shown:
            shown[key] = (shown[key][0] + "=" + r.mode, shown[key][1])
        else:
            shown[key] = (r.mode, r)
    with_eps = several_eps((r.impl, r.eps) for r in check.results)
    ncols = min(4, max(len(shown), 1))
    nrows = max(math.ceil(len(shown) / ncols), 1)
    figure = Figure(figsize=(3.3 * ncols, 2.3 * nrows + 0.6), dpi=DPI, layout="constrained")
    figure.suptitle(
        f"{check.path}: rows per relative loss error |L - exact| / max(|exact|, 1)", fontsize=11
    )
    for i, (mode, r) in enumerate(shown.values()):
        ax = figure.add_subplot(nrows, ncols, i + 1)
        buckets = list(r.error_histogram)
        counts = list(r.error_histogram.values())
        look = style(r.impl)
        bars = ax.bar(range(len(buckets)), counts, color=look.colour, gid=f"hist-{r.impl}")
        ax.bar_label(bars, labels=[str(n) if n else "" for n in counts], fontsize=7)
        ax.set_xticks(range(len(buckets)), buckets, fontsize=7, rotation=30)
        ax.set_ylim(0, max(counts, default=0) * 1.25 + 1)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # rows: whole numbers
        ax.tick_params(axis="y", labelsize=7)
        labels = "" if r.labels == "file" else f" {r.labels}"
        name = variant_label(r.impl, r.eps, with_eps)
        ax.set_title(
            f"{name} {dtype_label(r.dtype, r.policy)} {mode}{labels}", fontsize=8, loc="left"
        )
    return figure


# --- output ----------------------------------------------------------------------------------


def _bytes(figure: Figure, suffix: str) -> bytes:
    """``figure`` drawn as ``suffix``; metadata without dates, so a figure is reproducible."""
    fmt = suffix.lower().lstrip(".")
    metadata = {"png": {"Software": None}, "svg": {"Date": None}, "pdf": {"CreationDate": None}}
    buffer = io.BytesIO()
    figure.savefig(buffer, format=fmt, dpi=DPI, metadata=metadata[fmt])
    return buffer.getvalue()


def png(figure: Figure) -> bytes:
    """``figure`` as PNG bytes (what the HTML report embeds)."""
    return _bytes(figure, ".png")
