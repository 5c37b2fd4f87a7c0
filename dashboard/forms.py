"""The training form: every hyperparameter that matters for the chosen model, drawn from the table of
controls beside TrainConfig (mtl_core/config.py, CONTROLS), defaults from TrainConfig."""

from __future__ import annotations

from collections.abc import Mapping

import streamlit as st
import torch

from dashboard.identity import pending_exercise_lock, save_exercise_lock
from dashboard.links import (
    config_from_query,
    hidden_from_query,
    hideable,
    link_keys,
    link_to,
    linked_controls,
    settings_without_model,
)
from dashboard.state import full_mnist_here, get_data, get_runner, get_store
from dashboard.text import md_escape
from mtl_core.config import ConfigError, Control, TrainConfig, controls, weightings_for
from mtl_core.jobs.estimate import (
    Estimate,
    duration_words,
    epoch_estimate,
    parallel_seconds,
    queue_spot,
    run_estimate,
)
from mtl_core.models import MODELS
from mtl_core.reference import SEED_MODELS
from mtl_core.tasks import OWN_TASK_HELP, TASKS
from mtl_core.text import LABEL_MAX, plain_text
from mtl_core.weighting import WEIGHTINGS

MAX_SEEDS = 10  # runs one Start may queue (each is a job of its own in the class's queue)

# Short enough for the form's Data box at 1280 px (a longer name was cut); the control's help says more.
SOURCE_NAMES = {
    "auto": "auto",
    "mnist": "full MNIST",
    "mnist-subset": "subset (5,000)",
    "synthetic": "synthetic",
    "multimnist": "MultiMNIST",
}
# The form's parts below Start, each in an expander: a control's section -> the expander's title.
SECTIONS = {
    "more": "More settings: optimiser, seeds, validation split, fewer digits, precision, GPU",
    "loss": "Loss weights and learning-rate schedule",
}


def model_picker_ui() -> str:
    return st.radio(
        "Model",
        list(MODELS),
        format_func=lambda m: MODELS[m].title,
        horizontal=True,
        key="train_model",
        help="STL, hard sharing and cross-stitch are the MLP study; the CNN is the 4-task tutorial.",
    )


def _key(c: Control, model: str) -> str:
    return f"f_{c.name}_{model}"


def _in_form(model: str) -> tuple[Control, ...]:
    return tuple(c for c in controls(model) if c.section)


def form_values(config: TrainConfig) -> dict:
    """Every field of the form for `config.model`, by widget key, holding `config`'s values. Session
    State is the form's one source of values (no widget gets a `value=` of its own), so Reset, a shared
    link and "train again" can set them and the browser shows what they set. A widget key is
    f_<control name>_<model>, the control's name is its link parameter, so form and link cannot drift."""
    k = f"_{config.model}"
    d = {}
    for c in _in_form(config.model):
        value = getattr(config, c.field)
        # Two fields are not one widget each: the device is a GPU toggle, the loss weights a number per task.
        if c.field == "device":
            d[_key(c, config.model)] = value == "cuda"
        elif c.field == "loss_weights":
            d |= {f"f_w_{t}{k}": float(config.weight(t)) for t in TASKS}
        else:  # the widget's own type: a number input refuses an int where it was made with floats
            d[_key(c, config.model)] = list(value) if c.field == "tasks" else c.cast(value)
    d[f"f_label{k}"] = ""
    d[f"f_nseeds{k}"] = 1  # not a config field: how many runs (seeds) one Start queues
    return d


def _fields(model: str, values: Mapping) -> dict:
    """The TrainConfig fields the form's widget values (by key) stand for: form_values the other way."""
    out: dict = {"model": model}
    for c in _in_form(model):
        if c.field == "device":
            out["device"] = "cuda" if values[_key(c, model)] else "cpu"
        elif c.field != "loss_weights":
            out[c.field] = c.cast(values[_key(c, model)])
    weights = {t: float(values[f"f_w_{t}_{model}"]) for t in TASKS}
    out["loss_weights"] = {t: w for t, w in weights.items() if t in out["tasks"] and w != 1.0}
    return out


def form_config(model: str) -> dict:
    """The config fields the form of `model` holds right now (before Start too), the recipe's elsewhere."""
    state = st.session_state
    values = {key: state.get(key, default) for key, default in form_defaults(model).items()}
    return TrainConfig.preset(model).to_dict() | _fields(model, values)


def form_defaults(model: str) -> dict:
    """The form of `model` at its reference recipe: the starting values and what Reset puts back."""
    return form_values(TrainConfig.preset(model))


def load_into_form(config: TrainConfig, hidden: frozenset[str] = frozenset(), from_link: bool = False) -> None:
    """Show `config` in the Train form (its model chosen); `hidden` controls are left out of the form.
    `from_link`: an exercise link's settings, which Reset then returns to (instead of the recipe)."""
    st.session_state["train_model"] = config.model
    for key, value in form_values(config).items():
        st.session_state[key] = value
    st.session_state["form_hidden"] = hidden
    if from_link:
        st.session_state["form_link"] = config.to_dict()
    else:
        st.session_state.pop("form_link", None)


def _link_config(model: str) -> TrainConfig | None:
    """The exercise link's settings for `model`'s form, if a link filled it."""
    link = st.session_state.get("form_link")
    return TrainConfig.from_dict(link) if link and link.get("model") == model else None


def _reset_form(model: str) -> None:
    # Set, not deleted: a deleted key leaves the browser showing (and sending back) the old values.
    # Controls a link hid keep the link's values: the exercise stays what the teacher made it.
    hidden = st.session_state.get("form_hidden", frozenset())
    link = _link_config(model)
    for key, value in (form_values(link) if link else form_defaults(model)).items():
        if _short(key, model) not in hidden:
            st.session_state[key] = value


def _short(key: str, model: str) -> str:
    """The link name of a form key (f_lr_hard -> lr; every loss weight -> weights)."""
    name = key[2 : -len(model) - 1]
    return "weights" if name.startswith("w_") else name


def reset_form_ui(model: str) -> None:
    """One click back to the exercise link's settings, or else to the reference recipe, for this model's form."""
    label = "↺ Reset to the link's settings" if _link_config(model) else "↺ Reset to the reference recipe"
    st.button(label, key=f"reset_{model}", on_click=_reset_form, args=(model,))


def _value_words(c: Control | None, value) -> str:
    if c is None:  # "weights": every loss weight at once
        changed = {t: w for t, w in value.items() if w != 1.0}
        return ", ".join(f"{t} ×{w:g}" for t, w in changed.items()) if changed else "all 1"
    if c.field == "tasks":
        return ", ".join(value)
    if c.field == "loss_weighting":
        return WEIGHTINGS[value].title
    if c.field == "data":
        return SOURCE_NAMES.get(value, str(value))
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def setting_words(config: dict, name: str) -> str:
    """One control of a link (its hide= name) in plain words with its value: "Learning rate 0.002"."""
    if name == "weights":
        return f"Loss weights {_value_words(None, config.get('loss_weights') or {})}"
    c = linked_controls().get(name)
    if c is None:
        return name
    value = config.get(c.field)
    return f"{c.label or c.field} {_value_words(c, value)}"


def estimate_ui(model: str) -> None:
    """Before Start: how long this model's epochs take on this server, and the queue right now."""
    config = form_config(model)
    try:
        data = get_data(config["data"])
    except Exception:  # noqa: BLE001 - the form's data box explains; no estimate then
        return
    store, runner = get_store(), get_runner()
    one = epoch_estimate(store, config, data.source, data.n_train)
    total = Estimate(one.seconds * config["epochs"], one.measured)
    basis = "measured on this server" if one.measured else "a rough guess until one has run here"
    spot = queue_spot(store, {"created": float("inf"), "id": ""}, runner.n_workers, data.source, data.n_train)
    queue = (
        "A worker is free now."
        if spot.wait_s < 1
        else f"{spot.position - 1} queued ahead: it would start in about {duration_words(spot.wait_s)}."
    )
    st.caption(
        f"⏱ One epoch on {data.source} (batch {config['batch_size']}): {one.words()} ({basis}); "
        f"{config['epochs']} epochs: {total.words()}. {queue}"
    )


def _source_name(source: str) -> str:
    if source == "mnist" and not full_mnist_here():
        return SOURCE_NAMES[source] + " (not here)"
    return SOURCE_NAMES[source]


def _gpu_ui(c: Control, model: str) -> None:
    cuda = torch.cuda.is_available()
    why = None if cuda else "No CUDA GPU on this server, so training runs on the CPU."
    st.toggle(c.label, disabled=not cuda, key=_key(c, model), help=why)
    if not cuda:
        st.caption("GPU: not available on this server (no CUDA device found); training runs on the CPU.")


def _weights_ui(c: Control, model: str) -> None:
    # Three to a row: five side by side were too narrow to read in the form's column.
    for start in range(0, len(TASKS), 3):
        for col, t in zip(st.columns(3), list(TASKS)[start : start + 3]):
            col.number_input(t, min_value=c.bounds[0], max_value=c.bounds[1], step=c.step, key=f"f_w_{t}_{model}")


def _control_ui(c: Control, where, model: str) -> None:
    """The widget of one control, in `where` (the form or one of its columns); its value lands in Session
    State under its key, where the form reads it back (`_fields`)."""
    if c.field == "device":
        return _gpu_ui(c, model)
    if c.field == "loss_weights":
        return _weights_ui(c, model)
    kw = {"key": _key(c, model), "help": c.help or None}
    if c.field == "tasks":
        # A student's own task (NAME=DIGITS) is typed into the box; those already chosen stay options.
        chosen = [t for t in st.session_state.get(kw["key"], []) if t not in c.choices]
        where.multiselect(
            c.label,
            [*c.choices, *chosen],
            # Just the names (typed ones plain): with their questions two tasks took two lines; the help lists them.
            format_func=lambda t: plain_text(t, 40),
            accept_new_options=True,
            placeholder="Choose, or type your own: loop=0689",
            **(
                kw
                | {"help": "; ".join(task_words(t) for t in c.choices) + f". Or type {OWN_TASK_HELP} and press Enter."}
            ),
        )
    elif c.kind == "bool":
        where.checkbox(c.label, **kw)
    elif c.field == "loss_weighting":  # some weightings need a model that shares layers
        where.selectbox(c.label, weightings_for(model), format_func=lambda n: WEIGHTINGS[n].title, **kw)
    elif c.choices:
        where.selectbox(c.label, c.choices, format_func=_source_name if c.field == "data" else str, **kw)
    else:
        lo, hi = c.bounds
        where.number_input(c.label, min_value=lo, max_value=hi, step=c.step, format=c.format, **kw)


def task_words(name: str) -> str:
    """A task in the picker: a built-in one's name and question; a typed one as typed (a student's own
    NAME=DIGITS says what it is; anything else, plain, and Start says why it cannot train)."""
    return f"{name}: {TASKS[name].title}" if name in TASKS else plain_text(name, 40)


def _label_ui(where, model: str) -> None:
    where.text_input("Run name (optional)", max_chars=40, key=f"f_label_{model}")


def _nseeds_ui(where, model: str) -> None:
    most = max(1, min(MAX_SEEDS, get_runner().limits.per_owner))  # a student's cap on queued runs
    where.number_input(
        "Runs (seeds)",
        1,
        most,
        key=f"f_nseeds_{model}",
        help="Queue one run per seed (seed, seed + 1, ...). Compare then shows the mean ± std over "
        "them and the curves with a band: a difference smaller than the spread between seeds is noise. "
        f"At most {most} at once on this server.",
    )


# The form's widgets that set no TrainConfig field, each just after a control in its row: field -> (width, draw).
BESIDE = {"data": (2, _label_ui), "seed": (1, _nseeds_ui)}


def _section_ui(section: str, model: str, hidden: frozenset[str]) -> None:
    """The controls of one part of the form, a row at a time. A row keeps its columns where a control in it
    does not apply to `model` (the CNN's channels_last beside Precision), so the others keep their width."""
    rows: dict[str, list] = {}
    for c in controls():
        if c.section == section:
            rows.setdefault(c.row, []).append(c)
            if c.field in BESIDE:
                rows[c.row].append(c.field)
    for row in rows.values():
        if not any(isinstance(c, str) or c.applies(model) for c in row):
            continue
        widths = [BESIDE[c][0] if isinstance(c, str) else c.width for c in row]
        places = st.columns(widths) if len(row) > 1 else [st]
        for c, where in zip(row, places):
            if isinstance(c, str):
                BESIDE[c][1](where, model)
            elif c.applies(model) and c.name not in hidden:  # hidden by a link: its value stays in the state
                _control_ui(c, where, model)


def train_form_ui(model: str) -> dict | None:
    """Draw the form for `model`; return the config fields (and the run's label and number of seeds) when
    submitted, else None."""
    k = f"_{model}"  # per-model keys: switching model brings back that model's preset
    state = st.session_state
    for key, value in form_defaults(model).items():  # the values the widgets read (see form_values)
        state.setdefault(key, value)
    hidden = state.get("form_hidden", frozenset())
    with st.form(f"train_form{k}"):
        if hidden:
            fixed = form_config(model)
            words = "; ".join(md_escape(setting_words(fixed, h)) for h in sorted(hidden))
            st.caption(f"🔒 This link fixes some settings for the exercise: {words}.")
        _section_ui("main", model, hidden)
        # Start sits above the rarely changed settings, so on a projector it and the live curves it
        # starts are both in view without scrolling; a form submits every field wherever it is.
        start, share = st.columns([1, 1])
        submitted = start.form_submit_button("Start training", type="primary", key=f"train_submit{k}")
        if share.form_submit_button("🔗 Share", key=f"train_share{k}", help="A link to these settings"):
            state[f"sharing{k}"] = True  # the link below the form, for the values just committed
        for section, title in SECTIONS.items():
            with st.expander(title):
                _section_ui(section, model, hidden)
    if state.get(f"sharing{k}"):
        _form_link_ui(model)
    if not submitted:
        return None
    fields = _fields(model, state)
    if fields["data"] == "mnist" and not full_mnist_here():
        st.error(
            "Full MNIST is not on this server and cannot be downloaded from here. Choose **auto** or the "
            "**embedded subset** (real digits too), or ask whoever runs the server to add MNIST."
        )
        return None
    return fields | {"label": plain_text(state[f"f_label{k}"], LABEL_MAX), "n_seeds": int(state[f"f_nseeds{k}"])}


def seed_runs(config: TrainConfig, label: str, n_seeds: int) -> tuple[list[TrainConfig], list[str]]:
    """The runs one Start queues: `config` over `n_seeds` seeds, each named with its seed when there are
    several (Compare groups them back into one configuration)."""
    configs = config.over_seeds(n_seeds)
    if n_seeds == 1:
        return configs, [label]
    return configs, [f"{label or config.model} · seed {c.seed}" for c in configs]


def _link_body_ui(config: TrainConfig, key: str) -> None:
    """The hide list in plain words with each value, and the link itself."""
    values = config.to_dict()
    hide = st.multiselect(
        "Fix these settings (hidden from the student's form, kept at these values)",
        list(hideable()),
        key=f"hide_{key}",
        placeholder="none: the student can change everything",
        format_func=lambda name: setting_words(values, name),
    )
    st.code(link_to(str(st.context.url or ""), config, tuple(hide)), language=None, wrap_lines=True)
    st.caption("Anyone who opens it gets these settings in the Train form (their own runs, as always).")


def share_link_ui(config: TrainConfig, key: str) -> None:
    """A link that opens the Train page with `config` in the form; optionally with controls hidden."""
    with st.popover("🔗 Link to these settings"):
        _link_body_ui(config, key)


def _form_link_ui(model: str) -> None:
    """After "Share these settings": the link to what the form holds, before anything is trained."""
    try:
        config = TrainConfig(**form_config(model))
    except ConfigError as exc:
        st.warning(f"These settings cannot be shared: {md_escape(exc)}")
        return
    with st.container(border=True):
        st.markdown("**🔗 A link to these settings** (change the form and press Share again to update it)")
        _link_body_ui(config, f"form_{model}")
        st.button("Close", key=f"sharing_close_{model}", on_click=st.session_state.pop, args=(f"sharing_{model}",))


def apply_link_ui() -> None:
    """Settings that arrived in the address (a shared link) go into the form once; the address keeps
    only the `?u=` of this browser, so a reload does not undo what the student changed since."""
    params = {name: st.query_params[name] for name in st.query_params if name in link_keys()}
    for name in params:
        del st.query_params[name]
    if (sentence := settings_without_model(params)) is not None:
        st.warning(md_escape(sentence))
        return
    if not params:
        if lock := pending_exercise_lock():  # a reload keeps an exercise link's lock (dashboard/identity.py)
            load_into_form(*lock, from_link=True)
        return
    try:
        config = config_from_query(params)
    except ConfigError as exc:
        st.warning(f"This link's settings cannot be used ({md_escape(exc)}). The form shows the reference recipe.")
        return
    load_into_form(config, hidden_from_query(params), from_link=True)
    save_exercise_lock(config, st.session_state["form_hidden"])
    st.toast("The link's settings are in the form: press Start training.")


def study_estimate_ui(epochs: int, source: str) -> None:
    """Before the seed study is queued: how long its three runs take here, one after another and with
    this server's workers side by side (measured epochs where this server has them)."""
    try:
        data = get_data(source)
    except Exception:  # noqa: BLE001 - the sidebar says why the data is missing
        return
    store = get_store()
    each = [
        run_estimate(store, TrainConfig.preset(m, epochs=epochs).to_dict(), data.source, data.n_train)
        for m in SEED_MODELS
    ]
    workers = max(1, get_runner().n_workers)
    total = Estimate(parallel_seconds([e.seconds for e in each], workers), all(e.measured for e in each))
    basis = "measured on this server" if total.measured else "a rough guess until such runs have run here"
    st.caption(
        f"⏱ {epochs} epochs each on {data.source}: "
        + ", ".join(f"{m} {e.words()}" for m, e in zip(SEED_MODELS, each))
        + f"; all three {total.words()} with {workers} worker(s) free ({basis}), plus any queue."
    )
