"""Pictures of the architectures (Graphviz DOT, drawn in the browser by st.graphviz_chart): what is
shared and what belongs to one task, for the chosen model and tasks."""

from __future__ import annotations

from mtl_core.models import IN_FEATURES, MLP_HIDDEN, MMOE_EXPERTS, MODELS, head_dim
from mtl_core.tasks import get_task

SHARED, OWN, MIX = "#dbe9f6", "#fde7d4", "#e6d5f5"  # shared layers, one task's layers, cross-stitch units


def _node(name: str, label: str, fill: str) -> str:
    return f'{name} [label="{label}", style="filled,rounded", shape=box, fillcolor="{fill}"];'


def architecture_dot(model: str, tasks: tuple[str, ...]) -> str:
    """A left-to-right diagram of `model` answering `tasks` (sizes as built in mtl_core/models.py)."""
    h1, h2 = MLP_HIDDEN
    lines = ["digraph G {", "rankdir=LR;", 'node [fontname="sans-serif", fontsize=11];', "edge [arrowsize=0.6];"]
    lines.append(_node("x", f"image\\n28x28 = {IN_FEATURES}", "white"))
    outputs = {t: head_dim(t, MODELS[model].family) for t in tasks}  # logits (or 1 value)
    if model == "hard":
        lines.append(_node("trunk", f"shared trunk\\n{IN_FEATURES}→{h1}→{h2}\\n(ReLU)", SHARED))
        lines.append("x -> trunk;")
        for i, t in enumerate(tasks):
            lines.append(_node(f"h{i}", f"{t} head\\n{h2}→{outputs[t]}", OWN))
            lines.append(f"trunk -> h{i};")
    elif model == "mmoe":
        n = MMOE_EXPERTS
        for e in range(n):
            lines.append(_node(f"e{e}", f"expert {e + 1}\\n{IN_FEATURES}→{h1}→{h2}", SHARED))
            lines.append(f"x -> e{e};")
        for i, t in enumerate(tasks):
            lines.append(_node(f"g{i}", f"{t} gate\\nsoftmax over {n} experts", OWN))
            lines.append(_node(f"h{i}", f"{t} head\\n{h2}→{outputs[t]}", OWN))
            lines.append(f"x -> g{i};")
            lines += [f"e{e} -> h{i};" for e in range(n)] + [f"g{i} -> h{i} [style=dashed];"]
    elif model in ("stl_cnn", "cross_stitch_cnn"):
        stages = ["conv block 1\\n(conv 3x3, BN, ReLU, pool)", "conv block 2", "FC 3136→128"]
        for i, t in enumerate(tasks):
            for k, stage in enumerate(stages):
                lines.append(_node(f"c{i}_{k}", f"{t}: {stage}", OWN))
            hidden = 64 if get_task(t).kind == "multiclass" else 32
            lines.append(_node(f"h{i}", f"{t} head\\n128→{hidden}→{outputs[t]}", OWN))
            lines.append(f"x -> c{i}_0;")
        if model == "cross_stitch_cnn":
            for k in range(3):
                lines.append(_node(f"cs{k}", f"cross-stitch unit {k + 1}", MIX))
            for i in range(len(tasks)):
                lines += [f"c{i}_0 -> cs0;", f"cs0 -> c{i}_1;", f"c{i}_1 -> cs1;", f"cs1 -> c{i}_2;"]
                lines += [f"c{i}_2 -> cs2;", f"cs2 -> h{i};"]
        else:
            for i in range(len(tasks)):
                lines += [f"c{i}_0 -> c{i}_1;", f"c{i}_1 -> c{i}_2;", f"c{i}_2 -> h{i};"]
    elif model == "cnn":
        lines.append(_node("conv", "shared conv trunk\\n2 x (conv 3x3, BN, ReLU, pool)\\n3136→128", SHARED))
        lines.append("x -> conv;")
        for i, t in enumerate(tasks):
            hidden = 64 if get_task(t).kind == "multiclass" else 32
            lines.append(_node(f"h{i}", f"{t} head\\n128→{hidden}→{outputs[t]}", OWN))
            lines.append(f"conv -> h{i};")
    else:  # one column per task; cross-stitch mixes the columns after each hidden layer
        for i, t in enumerate(tasks):
            lines.append(_node(f"a{i}", f"{t}: {IN_FEATURES}→{h1}", OWN))
            lines.append(_node(f"b{i}", f"{t}: {h1}→{h2}", OWN))
            lines.append(_node(f"o{i}", f"{t} head\\n{h2}→{outputs[t]}", OWN))
            lines.append(f"x -> a{i};")
        if model == "cross_stitch":
            lines.append(_node("cs1", "cross-stitch unit 1\\n(alphas mix the columns)", MIX))
            lines.append(_node("cs2", "cross-stitch unit 2", MIX))
            for i in range(len(tasks)):
                lines += [f"a{i} -> cs1;", f"cs1 -> b{i};", f"b{i} -> cs2;", f"cs2 -> o{i};"]
        else:  # STL: nothing shared
            for i in range(len(tasks)):
                lines += [f"a{i} -> b{i};", f"b{i} -> o{i};"]
    lines.append("}")
    return "\n".join(lines)
