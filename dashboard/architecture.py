"""Pictures of the architectures (Graphviz DOT, drawn in the browser by st.graphviz_chart): what is
shared and what belongs to one task, drawn from the model registry (each ModelSpec's `sharing` and its
family's stages and heads in mtl_core/models), so a new model gets its picture, or a clear error."""

from __future__ import annotations

from collections.abc import Callable

from mtl_core.models import IN_FEATURES, MMOE_EXPERTS, MODELS, body_stages, head_sizes

SHARED, OWN, MIX = "#dbe9f6", "#fde7d4", "#e6d5f5"  # shared layers, one task's layers, cross-stitch units


def _node(name: str, label: str, fill: str) -> str:
    return f'{name} [label="{label}", style="filled,rounded", shape=box, fillcolor="{fill}"];'


def _heads(tasks: tuple[str, ...], family: str) -> list[str]:
    return [_node(f"h{i}", f"{t} head\\n{head_sizes(t, family)}", OWN) for i, t in enumerate(tasks)]


def _trunk(tasks: tuple[str, ...], family: str) -> list[str]:
    """One shared body, a head per task."""
    lines = [_node("trunk", "shared trunk\\n" + "\\n".join(body_stages(family)), SHARED), "x -> trunk;"]
    return lines + _heads(tasks, family) + [f"trunk -> h{i};" for i in range(len(tasks))]


def _columns(tasks: tuple[str, ...], family: str, mixed: bool) -> list[str]:
    """One column per task; with `mixed`, a cross-stitch unit after each stage joins the columns."""
    stages = body_stages(family)
    lines = []
    for i, t in enumerate(tasks):
        lines += [_node(f"c{i}_{k}", f"{t}: {stage}", OWN) for k, stage in enumerate(stages)]
        lines.append(f"x -> c{i}_0;")
    lines += _heads(tasks, family)
    ends = [*(f"c{{i}}_{k}" for k in range(1, len(stages))), "h{i}"]  # what follows each stage
    for k, after in enumerate(ends):
        if mixed:
            lines.append(_node(f"cs{k}", f"cross-stitch unit {k + 1}", MIX))
        for i in range(len(tasks)):
            nxt = after.format(i=i)
            lines += [f"c{i}_{k} -> cs{k};", f"cs{k} -> {nxt};"] if mixed else [f"c{i}_{k} -> {nxt};"]
    return lines


def _experts(tasks: tuple[str, ...], family: str) -> list[str]:
    """Shared experts (each a whole body), mixed for each task's head by that task's softmax gate."""
    body = "→".join([str(IN_FEATURES), *(s.split("→")[-1] for s in body_stages(family))])
    lines = []
    for e in range(MMOE_EXPERTS):
        lines += [_node(f"e{e}", f"expert {e + 1}\\n{body}", SHARED), f"x -> e{e};"]
    lines += _heads(tasks, family)
    for i, t in enumerate(tasks):
        lines += [_node(f"g{i}", f"{t} gate\\nsoftmax over {MMOE_EXPERTS} experts", OWN), f"x -> g{i};"]
        lines += [f"e{e} -> h{i};" for e in range(MMOE_EXPERTS)] + [f"g{i} -> h{i} [style=dashed];"]
    return lines


DRAW: dict[str, Callable[[tuple[str, ...], str], list[str]]] = {
    "nothing": lambda tasks, family: _columns(tasks, family, mixed=False),
    "trunk": _trunk,
    "cross_stitch": lambda tasks, family: _columns(tasks, family, mixed=True),
    "experts": _experts,
}


def architecture_dot(model: str, tasks: tuple[str, ...]) -> str:
    """A left-to-right diagram of `model` answering `tasks`; KeyError for a model or sharing not known."""
    spec = MODELS[model]
    lines = ["digraph G {", "rankdir=LR;", 'node [fontname="sans-serif", fontsize=11];', "edge [arrowsize=0.6];"]
    lines.append(_node("x", f"image\\n28x28 = {IN_FEATURES}", "white"))
    lines += DRAW[spec.sharing](tasks, spec.family)
    lines.append("}")
    return "\n".join(lines)
