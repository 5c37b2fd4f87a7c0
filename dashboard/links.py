"""Experiments as links: the Train form's settings in a URL (`/train?model=hard&epochs=3&hide=lr`), so a
teacher can hand out an exercise, or anyone can pass on the settings of a run. A link carries only what
differs from the model's reference recipe; `hide` names controls the form then leaves out (their values
come from the link), for a focused exercise. Parsing checks everything through TrainConfig: a bad link
gets a sentence, never a half-filled form."""

from __future__ import annotations

import math
from collections.abc import Mapping
from urllib.parse import urlencode

from mtl_core.config import ConfigError, Control, TrainConfig, control, controls, weightings_for
from mtl_core.models import MODELS
from mtl_core.tasks import TASKS
from mtl_core.weighting import WEIGHTINGS

WEIGHT = "w_"  # w_<task>: that task's loss weight


def linked_controls() -> dict[str, Control]:
    """Link name -> control, for every control a link carries (mtl_core/config.py, CONTROLS)."""
    return {c.name: c for c in controls() if c.link}


def link_fields() -> dict[str, str]:
    """Link name -> TrainConfig field, for every control a link carries."""
    return {name: c.field for name, c in linked_controls().items()}


def hideable() -> tuple[str, ...]:
    """What hide= may name: the controls a link carries, and "weights" (every loss weight at once)."""
    return (*link_fields(), "weights")


def link_keys() -> tuple[str, ...]:
    return ("model", "hide", *link_fields(), *(WEIGHT + t for t in TASKS))


def _shown(text: str) -> str:
    return text if len(text) <= 40 else text[:40] + "…"


def _bound(v: float) -> str:
    return f"{v:,}" if isinstance(v, int) else f"{v:g}"


def _out_of_range(name: str, text: str, value: float, c: Control) -> str | None:
    """Why `value` (link parameter `name`) is outside the form's range for `c`, or None if it is inside.
    The form's widgets would silently replace such a value (a batch of 10000 became 1)."""
    lo, hi = c.bounds
    if math.isfinite(value) and lo <= value <= hi:
        return None
    return f"{name}={_shown(text)} is outside the allowed range, {_bound(lo)} to {_bound(hi)}"


def _parse(c: Control, text: str):
    try:
        if c.field == "tasks":
            return tuple(t for t in text.split(",") if t)
        if c.kind == "bool":
            if text.lower() not in ("1", "0", "true", "false"):
                raise ValueError
            return text.lower() in ("1", "true")
        if c.kind in ("int", "float"):
            return c.cast(text)
    except ValueError:
        raise ConfigError(f"'{c.name}={_shown(text)}' is not a {c.kind}") from None
    return text


def config_from_query(params: Mapping[str, str]) -> TrainConfig:
    """The configuration a link describes (its model's recipe, changed where the link says). Every value
    must be one the Train form can hold (the controls' bounds): a value outside is refused with the reason,
    never replaced by the nearest one the form has."""
    model = params.get("model", "")
    if model not in MODELS:
        raise ConfigError(f"unknown model {_shown(model)!r}; valid models: {', '.join(MODELS)}")
    preset = TrainConfig.preset(model)
    changes, weights, problems = {}, dict(preset.loss_weights), []
    linked = linked_controls()
    for name, text in params.items():
        if (c := linked.get(name)) is not None:
            try:
                value = _parse(c, text)
            except ConfigError as exc:
                problems.append(str(exc))
                continue
            if c.bounds and (why := _out_of_range(name, text, value, c)):
                problems.append(why)
            # The one choice that depends on the model, so TrainConfig's own check cannot name the reason.
            elif c.field == "loss_weighting" and value in WEIGHTINGS and value not in weightings_for(model):
                offered = ", ".join(weightings_for(model))
                problems.append(f"weighting={value} needs a model that shares layers; for {model}: {offered}")
            else:
                changes[c.field] = value
        elif name.startswith(WEIGHT) and name[len(WEIGHT) :] in TASKS:
            try:
                weight = float(text)
            except ValueError:
                problems.append(f"'{name}={_shown(text)}' is not a number")
                continue
            if why := _out_of_range(name, text, weight, control("loss_weights")):
                problems.append(why)
            else:
                weights[name[len(WEIGHT) :]] = weight
    if problems:
        raise ConfigError("; ".join(problems))
    tasks = changes.get("tasks", preset.tasks)
    changes["loss_weights"] = {t: w for t, w in weights.items() if t in tasks and w != 1.0}
    return preset.replace(**changes)  # TrainConfig checks every value and names each problem


def settings_without_model(params: Mapping[str, str]) -> str | None:
    """The sentence for a link that has settings but no model= (it would otherwise be ignored without a
    word), or None when there is nothing to say."""
    if "model" in params or not params:
        return None
    return (
        f"This link has settings ({', '.join(sorted(params))}) but no model=…; valid models: {', '.join(MODELS)}. "
        "The form shows the reference recipe."
    )


def hidden_from_query(params: Mapping[str, str]) -> frozenset[str]:
    return frozenset(h for h in params.get("hide", "").split(",") if h in hideable())


def query_from_config(config: TrainConfig, hide: tuple[str, ...] = ()) -> dict[str, str]:
    """The shortest link parameters for `config`: the model, and whatever differs from its recipe."""
    preset = TrainConfig.preset(config.model)
    query = {"model": config.model}
    for name, field in link_fields().items():
        value, default = getattr(config, field), getattr(preset, field)
        if value != default:
            if field == "tasks":
                query[name] = ",".join(value)
            elif isinstance(value, bool):
                query[name] = "1" if value else "0"
            else:
                query[name] = str(value)
    for t in config.tasks:
        if config.weight(t) != preset.weight(t):
            query[WEIGHT + t] = f"{config.weight(t):g}"
    if hide:
        query["hide"] = ",".join(h for h in hide if h in hideable())
    return query


def link_to(base_url: str, config: TrainConfig, hide: tuple[str, ...] = ()) -> str:
    """A full address of the Train page that opens with `config` in the form."""
    root = base_url.split("?")[0].rstrip("/")
    for page in ("/train", "/compare", "/draw", "/cross_stitch"):
        root = root.removesuffix(page)
    return f"{root}/train?{urlencode(query_from_config(config, hide))}"
