"""Plotly figures for the pages (no Streamlit here, so they are testable as plain functions)."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from dashboard.text import chart_text
from mtl_core.tasks import VALUE_SCALE, get_task

# Okabe and Ito's colours, told apart with the common kinds of colour blindness (their yellow, faint on
# white, comes last); lines differ by dash and marker too, so no reading rests on colour alone.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#999999", "#F0E442"]
DASHES = ["solid", "dash", "dot", "dashdot", "longdash", "longdashdot"]
SYMBOLS = ["circle", "square", "diamond", "triangle-up", "x", "triangle-down", "cross", "pentagon"]
# Heat-map scales readable with colour blindness: one hue (Blues), or blue against red (RdBu), never
# red against green.
SAFE_SCALES = ("Blues", "RdBu")
# Every figure's look. Set as plotly's default, a new figure takes it without validating it again; passed
# to each figure (update_layout(template=...)) it cost 15 ms a figure on an idle machine, and several times
# that on a busy server, where a watched run's curves are rebuilt as its epochs come in.
pio.templates.default = "plotly_white"


# Markers drawn per line at most, spread along it: enough to tell the lines apart, while a curve of 500
# epochs is not 500 shapes per line for the browser to build again each time the chart takes new epochs.
MAX_MARKERS = 25


def series_style(i: int) -> dict:
    """The i-th line's look: colour, dash and marker all differ from the previous lines'."""
    return dict(line=dict(color=PALETTE[i % len(PALETTE)], dash=DASHES[i % len(DASHES)]),
                marker=dict(symbol=SYMBOLS[i % len(SYMBOLS)], size=7, maxdisplayed=MAX_MARKERS))  # fmt: skip


def epoch_axis(fig: go.Figure, last_epoch: int) -> None:
    """Whole epochs only on the x axis (never 1.5), about ten ticks at most."""
    fig.update_xaxes(title_text="epoch", tick0=0, dtick=max(1, math.ceil(last_epoch / 10)))


def _layout(fig: go.Figure, title: str, height: int = 330) -> go.Figure:
    fig.update_layout(
        title=title,
        height=height,
        margin=dict(l=10, r=10, t=45, b=10),
        # Hung from its top below the x-axis title: more rows grow downwards, never over the curves.
        legend=dict(orientation="h", yanchor="top", y=-0.22, x=0),
    )
    return fig


def training_curves(records: list[dict], total_epochs: int | None = None) -> go.Figure:
    """Train loss per task (left) and test metric per task plus the average (right); the validation
    metric where the run held digits out to pick its best epoch on."""
    split = records[0].get("split", "test") if records else "test"
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Train loss per task", f"{split.capitalize()} metric per task"))
    epochs = [r["epoch"] for r in records]
    tasks = list(records[0]["train_loss"]) if records else []
    for i, t in enumerate(tasks):
        style = series_style(i)
        fig.add_trace(
            go.Scatter(
                x=epochs, y=[r["train_loss"][t] for r in records], name=f"{t} loss", mode="lines+markers", **style
            ),
            row=1,
            col=1,
        )
        if get_task(t).kind == "regression":
            ys, name = [1 - r["metrics"][t]["mae"] for r in records], f"{t} 1-MAE"
        else:
            ys, name = [r["metrics"][t]["acc"] for r in records], f"{t} acc"
        fig.add_trace(go.Scatter(x=epochs, y=ys, name=name, mode="lines+markers", **style), row=1, col=2)
    if records and records[0].get("avg_acc") is not None:
        fig.add_trace(
            go.Scatter(
                x=epochs,
                y=[r["avg_acc"] for r in records],
                name="average acc",
                mode="lines+markers",
                line=dict(color="black", dash="dash", width=3),
                marker=dict(symbol="star", size=9, maxdisplayed=MAX_MARKERS),
            ),
            row=1,
            col=2,
        )
    # Accuracies never exceed 1: without a cap, a flat 100 % line gets a 0-2 axis.
    fig.update_yaxes(autorangeoptions=dict(maxallowed=1.01), row=1, col=2)
    if total_epochs and total_epochs <= 50:  # show the road ahead, unless it squashes the curve
        fig.update_xaxes(range=[0.5, total_epochs + 0.5])
    epoch_axis(fig, total_epochs or (epochs[-1] if epochs else 1))
    return _layout(fig, "", height=360)


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def overlay(
    series: dict[str, tuple[list, list]],
    title: str,
    y_title: str,
    y_max: float | None = None,
    spread: dict[str, list[float]] | None = None,
) -> go.Figure:
    """One line per series; where `spread` gives a series its standard deviation per point (runs over
    several seeds: the line is their mean), a shaded band of mean ± std around it."""
    fig = go.Figure()
    for i, (name, (x, y)) in enumerate(series.items()):
        style = series_style(i)
        color = style["line"]["color"]
        std = (spread or {}).get(name)
        if std is not None and len(x):
            # The band's lower edge, then its upper edge filled down to it; neither in the legend.
            lower = [m - s for m, s in zip(y, std)]
            upper = [m + s for m, s in zip(y, std)]
            band = dict(x=x, mode="lines", line=dict(width=0), hoverinfo="skip", showlegend=False)
            fig.add_trace(go.Scatter(y=lower, **band))
            fig.add_trace(go.Scatter(y=upper, fill="tonexty", fillcolor=_rgba(color, 0.2), **band))
        fig.add_trace(go.Scatter(x=x, y=y, name=chart_text(name), mode="lines+markers", **style))
    epoch_axis(fig, max((x[-1] for x, _ in series.values() if len(x)), default=1))
    fig.update_yaxes(title_text=y_title)
    if y_max is not None:
        fig.update_yaxes(autorangeoptions=dict(maxallowed=y_max))
    return _layout(fig, title)


def bars(
    names: list[str], values: list, title: str, fmt: str = "{:,}", zoom: bool = False, errors: list | None = None
) -> go.Figure:
    """One bar per run (or per configuration: its mean, with `errors` its std over seeds as error bars).
    `zoom` starts the axis near the smallest value, so 97.8 and 98.7 do not look the same (the title
    says the axis is cut)."""
    errors = errors or [None] * len(values)

    def text(v, e) -> str:
        return "-" if v is None else fmt.format(v) + ("" if e is None else f" ± {fmt.format(e)}")

    fig = go.Figure(
        go.Bar(
            x=[chart_text(n) for n in names],
            y=values,
            text=[text(v, e) for v, e in zip(values, errors)],
            marker_color=PALETTE[: len(names)],
            textposition="auto",
            error_y=dict(type="data", array=[e or 0.0 for e in errors], visible=any(e is not None for e in errors)),
        )
    )
    shown = [v for v in values if v is not None]
    if zoom and shown:
        lo = min(v - (e or 0.0) for v, e in zip(values, errors) if v is not None)
        hi = max(v + (e or 0.0) for v, e in zip(values, errors) if v is not None)
        pad = max(0.5, (hi - lo) * 0.5)
        fig.update_yaxes(range=[max(0.0, lo - pad), hi + pad / 4])
        title += f" · axis starts at {round(max(0.0, lo - pad), 1):g}"
    return _layout(fig, title, height=300)


def confusion_heatmap(matrix: np.ndarray, classes: tuple[str, ...], title: str) -> go.Figure:
    fig = go.Figure(
        go.Heatmap(
            z=matrix,
            x=list(classes),
            y=list(classes),
            colorscale="Blues",
            text=matrix,
            texttemplate="%{text}",
            showscale=False,
        )
    )
    # Streamlit reports no selection on a heatmap, so an invisible marker sits on every cell: a click on a
    # cell selects its marker, whose point_index is row * n + column (see cell_of_point).
    n = len(classes)
    fig.add_trace(
        go.Scatter(
            x=[classes[j] for i in range(n) for j in range(n)],
            y=[classes[i] for i in range(n) for j in range(n)],
            mode="markers",
            marker=dict(size=40 if n <= 2 else 24, opacity=0, line=dict(width=0)),
            selected=dict(marker=dict(opacity=0)),  # clicked or not, never drawn
            unselected=dict(marker=dict(opacity=0)),
            hoverinfo="none",  # no label of its own, but clicks still reach it ("skip" would drop them too)
            showlegend=False,
            name="cells",
        )
    )
    fig.update_layout(clickmode="event+select")
    fig.update_xaxes(title_text="predicted")
    fig.update_yaxes(title_text="true", autorange="reversed")
    return _layout(fig, title, height=300 if len(classes) <= 2 else 420)


def cell_of_point(point: dict, n_classes: int) -> tuple[int, int] | None:
    """(true, predicted) of a clicked confusion-matrix cell, from a point of its marker trace."""
    if point.get("curve_number") != 1 or not isinstance(point.get("point_index"), int):
        return None
    return divmod(point["point_index"], n_classes)


def value_scatter(true: np.ndarray, pred: np.ndarray) -> go.Figure:
    rng = np.random.default_rng(0)
    jitter = rng.uniform(-0.2, 0.2, len(true))  # digits are integers; spread them to see density
    fig = go.Figure(
        go.Scattergl(x=true + jitter, y=pred, mode="markers", marker=dict(size=3, opacity=0.35), name="test digits")
    )
    fig.add_trace(
        go.Scatter(
            x=[0, VALUE_SCALE], y=[0, VALUE_SCALE], mode="lines", name="perfect", line=dict(color="black", dash="dash")
        )
    )
    fig.update_xaxes(title_text="true digit")
    fig.update_yaxes(title_text="predicted value (digits)")
    return _layout(fig, "value: predicted vs true")


def error_histogram(true: np.ndarray, pred: np.ndarray) -> go.Figure:
    fig = go.Figure(go.Histogram(x=pred - true, nbinsx=60))
    fig.update_xaxes(title_text="error (digits)")
    return _layout(fig, "value: error histogram")


def alpha_heatmaps(
    alphas: list[list[list[float]]], tasks: list[str], title: str = "", limit: float | None = None
) -> go.Figure:
    """One T x T heatmap per cross-stitch unit, values written in the cells. `limit` fixes the colours
    to ±limit (the same for every epoch of a run); None scales them to these alphas. RdBu is ColorBrewer's
    diverging scale that stays readable with red-green colour blindness, and the values are in the cells."""
    n = len(alphas)
    # Two units: the MLP's (after each hidden layer); three: the CNN's (after each conv block and the FC layer).
    where = ["conv block 1", "conv block 2", "the FC layer"] if n == 3 else [f"hidden layer {u + 1}" for u in range(n)]
    fig = make_subplots(rows=1, cols=n, subplot_titles=[f"unit {u + 1} (after {where[u]})" for u in range(n)])
    for u, a in enumerate(alphas):
        fig.add_trace(
            go.Heatmap(
                z=a,
                x=[f"from {t}" for t in tasks],
                y=[f"into {t}" for t in tasks],
                text=np.round(np.array(a), 3),
                texttemplate="%{text}",
                colorscale="RdBu",
                zmid=0,
                **({"zmin": -limit, "zmax": limit} if limit else {}),
                showscale=u == n - 1,
            ),
            row=1,
            col=u + 1,
        )
        fig.update_yaxes(autorange="reversed", row=1, col=u + 1)
    fig = _layout(fig, title, height=360)
    fig.update_layout(margin=dict(t=80))  # room for the title above the unit titles
    return fig


def alpha_animation(
    history: list[list[list[list[float]]]], tasks: list[str], first_epoch: int = 1, limit: float | None = None
) -> go.Figure:
    """All units side by side, one frame per epoch, with Plotly's own play button (runs in the browser).
    `first_epoch` is 0 when the history starts with the initialisation; `limit` as in alpha_heatmaps."""
    n_units = len(history[0])
    frames = []
    for e, alphas in enumerate(history, start=first_epoch):
        f = alpha_heatmaps(alphas, tasks, limit=limit)
        frames.append(go.Frame(data=f.data, name=str(e), layout=go.Layout(title=f"epoch {e}")))
    fig = alpha_heatmaps(history[0], tasks, f"epoch {first_epoch}", limit=limit)
    fig.frames = frames
    steps = [
        dict(
            method="animate", label=str(e), args=[[str(e)], dict(mode="immediate", frame=dict(duration=0, redraw=True))]
        )
        for e in range(first_epoch, first_epoch + len(history))
    ]
    fig.update_layout(
        updatemenus=[
            dict(
                type="buttons",
                x=0,
                y=-0.25,
                xanchor="left",
                buttons=[
                    dict(
                        label="▶ play",
                        method="animate",
                        args=[None, dict(frame=dict(duration=500, redraw=True), fromcurrent=True)],
                    ),
                    dict(
                        label="⏸ pause", method="animate", args=[[None], dict(mode="immediate", frame=dict(duration=0))]
                    ),
                ],
            )
        ],
        sliders=[dict(steps=steps, x=0.15, len=0.85, y=-0.2, currentvalue=dict(prefix="epoch "))],
        height=420 if n_units else 300,
    )
    return fig


def alpha_lines(history: list[list[list[list[float]]]], tasks: list[str], first_epoch: int = 1) -> go.Figure:
    n_units = len(history[0])
    fig = make_subplots(
        rows=1, cols=n_units, subplot_titles=[f"unit {u + 1}" for u in range(n_units)], shared_yaxes=True
    )
    epochs = list(range(first_epoch, first_epoch + len(history)))
    k = 0
    for i, ti in enumerate(tasks):
        for j, tj in enumerate(tasks):
            color = PALETTE[k % len(PALETTE)]
            k += 1
            kind = "same-task" if i == j else "other-task"
            for u in range(n_units):
                fig.add_trace(
                    go.Scatter(
                        x=epochs,
                        y=[h[u][i][j] for h in history],
                        mode="lines+markers",
                        name=f"α[{ti}←{tj}] ({kind})",
                        legendgroup=f"{i}{j}",
                        showlegend=u == 0,
                        line=dict(color=color, dash="solid" if i == j else "dot"),
                        marker=dict(symbol=SYMBOLS[(k - 1) % len(SYMBOLS)], size=7),
                    ),
                    row=1,
                    col=u + 1,
                )
    epoch_axis(fig, epochs[-1] if epochs else 1)
    return _layout(fig, "Each alpha over epochs", height=380)


def class_probabilities(probs: np.ndarray, classes: tuple[str, ...], title: str) -> go.Figure:
    best = int(np.argmax(probs))
    colors = ["#EF553B" if i == best else "#9DB4F0" for i in range(len(classes))]
    fig = go.Figure(
        go.Bar(x=list(classes), y=probs, marker_color=colors, text=[f"{p:.0%}" for p in probs], textposition="outside")
    )
    fig.update_yaxes(range=[0, 1.15], tickformat=".0%")
    return _layout(fig, title, height=260)


def conflict_chart(records: list[dict]) -> go.Figure | None:
    """The cosine between each pair of tasks' gradients on the shared layers, per epoch, with the zero
    line marked (below it the two tasks pull the shared weights apart). None when nothing was probed."""
    probed = [r for r in records if r.get("conflict")]
    if not probed:
        return None
    epochs = [r["epoch"] for r in probed]
    pairs = probed[0]["conflict"]["cos"]
    series = {p.replace("|", " vs "): (epochs, [r["conflict"]["cos"].get(p) for r in probed]) for p in pairs}
    fig = overlay(series, "Gradient agreement on the shared layers (cosine)", "cosine")
    fig.add_hline(y=0, line_dash="dot", line_color="#888")
    fig.update_yaxes(range=[-1.05, 1.05])
    return fig


def affinity_heatmap(affinity: dict[str, float], tasks: list[str] | tuple[str, ...]) -> go.Figure:
    """Task affinity as a T x T grid: row i, column j is how much a step on task i lowered task j's loss
    (in thousandths, relative). Diverging colours centred on 0: blue helps, red hurts."""
    z = [[1e3 * affinity.get(f"{i}|{j}", float("nan")) for j in tasks] for i in tasks]
    top = max((abs(v) for row in z for v in row if v == v), default=1.0) or 1.0
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[chart_text(t) for t in tasks],
            y=[chart_text(t) for t in tasks],
            zmin=-top,
            zmax=top,
            colorscale="RdBu",
            text=[[f"{v:.2f}" for v in row] for row in z],
            texttemplate="%{text}",
            colorbar=dict(title="x 1e-3"),
        )
    )
    fig.update_xaxes(title_text="loss that changed (task j)", side="bottom")
    fig.update_yaxes(title_text="step on task i", autorange="reversed")
    return _layout(fig, "Task affinity (lookahead, averaged over training)")


def pareto_chart(points, tasks: tuple[str, str], names: list[str]) -> go.Figure:
    """Each run as a point (task A's test accuracy against task B's), the ones no other point beats on both
    joined into the front; dominated points hollow and grey. `names` label the points (weights or method)."""
    a, b = tasks
    fig = go.Figure()
    best = sorted((p.accuracy[a], p.accuracy[b]) for p in points if not p.dominated)
    if len(best) > 1:
        fig.add_trace(go.Scatter(x=[x for x, _ in best], y=[y for _, y in best], mode="lines", name="front",
                                 line=dict(color=PALETTE[0], dash="dash"), hoverinfo="skip"))  # fmt: skip
    for flag, name, color, symbol in ((False, "on the front", PALETTE[0], "circle"),
                                      (True, "dominated", PALETTE[6], "circle-open")):  # fmt: skip
        chosen = [(p, n) for p, n in zip(points, names) if p.dominated == flag]
        if not chosen:
            continue
        fig.add_trace(
            go.Scatter(
                x=[p.accuracy[a] for p, _ in chosen],
                y=[p.accuracy[b] for p, _ in chosen],
                customdata=[p.run_id for p, _ in chosen],
                text=[n for _, n in chosen],
                mode="markers+text",
                textposition="top center",
                name=name,
                marker=dict(color=color, symbol=symbol, size=11, line=dict(width=2, color=color)),
                hovertemplate=f"%{{text}}<br>{a} %{{x:.2f}} %<br>{b} %{{y:.2f}} %<extra></extra>",
            )
        )
    fig.update_xaxes(title_text=f"{a} test accuracy (%)")
    fig.update_yaxes(title_text=f"{b} test accuracy (%)")
    return _layout(fig, f"Pareto front: {a} against {b}", height=420)
