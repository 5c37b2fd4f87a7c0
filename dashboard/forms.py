"""The training form: every hyperparameter that matters for the chosen model, defaults from TrainConfig."""

from __future__ import annotations

import streamlit as st
import torch

from dashboard.identity import pending_exercise_lock, save_exercise_lock
from dashboard.links import (
    FIELDS,
    HIDEABLE,
    LINK_KEYS,
    config_from_query,
    field_kind,
    hidden_from_query,
    link_to,
    settings_without_model,
    weightings_for,
)
from dashboard.state import full_mnist_here, get_data, get_runner, get_store
from dashboard.text import md_escape
from mtl_core.config import FORM_RANGES, OPTIMIZERS, PRECISIONS, ConfigError, TrainConfig
from mtl_core.data import SOURCES
from mtl_core.estimate import (
    Estimate,
    duration_words,
    epoch_estimate,
    parallel_seconds,
    queue_spot,
    run_estimate,
)
from mtl_core.models import ALPHA_INITS, MODELS
from mtl_core.reference import SEED_MODELS
from mtl_core.tasks import TASKS
from mtl_core.text import LABEL_MAX, plain_text
from mtl_core.weighting import WEIGHTINGS

MAX_SEEDS = 10  # runs one Start may queue (each is a job of its own in the class's queue)

SOURCE_NAMES = {
    "auto": "auto (full MNIST if available, else the embedded subset)",
    "mnist": "full MNIST (60,000 / 10,000)",
    "mnist-subset": "embedded subset (4,000 / 1,000 real digits)",
    "synthetic": "synthetic (random tensors, for a smoke test)",
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


def form_values(config: TrainConfig) -> dict:
    """Every field of the form for `config.model`, by widget key, holding `config`'s values. Session
    State is the form's one source of values (no widget gets a `value=` of its own), so Reset, a shared
    link and "train again" can set them and the browser shows what they set. The fields are the link's
    (`dashboard/links.FIELDS`: a widget key is f_<link name>_<model>), so form and link cannot drift."""
    k = f"_{config.model}"
    mixes = "alpha_init" in MODELS[config.model].settings  # a cross-stitch model (MLP or CNN)
    shown = {"ainit": mixes, "amult": mixes}
    shown["cl"] = MODELS[config.model].family == "cnn"
    d = {}
    for name, field in FIELDS.items():
        if shown.get(name, True):
            value = getattr(config, field)
            # The widget's own type: a number input refuses an int where it was made with floats.
            d[f"f_{name}{k}"] = list(value) if field == "tasks" else _WIDGET_TYPE.get(field_kind(name), str)(value)
    d[f"f_gpu{k}"] = config.device == "cuda"
    d[f"f_label{k}"] = ""
    d[f"f_nseeds{k}"] = 1  # not a config field: how many runs (seeds) one Start queues
    d |= {f"f_w_{t}{k}": float(config.weight(t)) for t in TASKS}
    return d


_WIDGET_TYPE = {"int": int, "float": float, "bool": bool}


def _range(field: str) -> dict:
    """A number input's bounds for TrainConfig `field`: the form's ranges, which the link check reads too."""
    lo, hi = FORM_RANGES[field]
    return {"min_value": lo, "max_value": hi}


def form_defaults(model: str) -> dict:
    """The form of `model` at its reference recipe: the starting values and what Reset puts back."""
    return form_values(TrainConfig.preset(model))


def load_into_form(config: TrainConfig, hidden: frozenset[str] = frozenset()) -> None:
    """Show `config` in the Train form (its model chosen); `hidden` controls are left out of the form."""
    st.session_state["train_model"] = config.model
    for key, value in form_values(config).items():
        st.session_state[key] = value
    st.session_state["form_hidden"] = hidden


def _reset_form(model: str) -> None:
    # Set, not deleted: a deleted key leaves the browser showing (and sending back) the old values.
    # Controls a link hid keep the link's values: the exercise stays what the teacher made it.
    hidden = st.session_state.get("form_hidden", frozenset())
    for key, value in form_defaults(model).items():
        if _short(key, model) not in hidden:
            st.session_state[key] = value


def _short(key: str, model: str) -> str:
    """The link name of a form key (f_lr_hard -> lr; every loss weight -> weights)."""
    name = key[2 : -len(model) - 1]
    return "weights" if name.startswith("w_") else name


def reset_form_ui(model: str) -> None:
    """One click back to the reference recipe for this model's form."""
    st.button("↺ Reset to the reference recipe", key=f"reset_{model}", on_click=_reset_form, args=(model,))


def estimate_ui(model: str) -> None:
    """Before Start: how long this model's epochs take on this server, and the queue right now."""
    k = f"_{model}"
    preset = TrainConfig.preset(model)
    state = st.session_state
    config = preset.to_dict() | {
        "epochs": int(state.get(f"f_epochs{k}", preset.epochs)),
        "batch_size": int(state.get(f"f_batch{k}", preset.batch_size)),
        "train_limit": int(state.get(f"f_limit{k}", 0)),
        "val_split": int(state.get(f"f_val{k}", 0)),
        "loss_weighting": state.get(f"f_weighting{k}", preset.loss_weighting),
    }
    try:
        data = get_data(state.get(f"f_data{k}", "auto"))
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


def train_form_ui(model: str) -> dict | None:
    """Draw the form for `model`; return the config fields when submitted, else None."""
    k = f"_{model}"  # per-model keys: switching model brings back that model's preset
    family = MODELS[model].family
    state = st.session_state
    for key, value in form_defaults(model).items():  # the values the widgets read (see form_values)
        state.setdefault(key, value)
    hidden = state.get("form_hidden", frozenset())

    def show(name: str, draw):
        """The control `draw()` makes, or, where a link hid it, the value the link set."""
        return state[f"f_{name}{k}"] if name in hidden else draw()

    with st.form(f"train_form{k}"):
        if hidden:
            st.caption("🔒 This link fixes some settings for the exercise: " + ", ".join(sorted(hidden)) + ".")
        tasks = show(
            "tasks",
            lambda: st.multiselect(
                "Tasks", list(TASKS), key=f"f_tasks{k}", format_func=lambda t: f"{t}: {TASKS[t].title}"
            ),
        )
        c1, c2, c3 = st.columns(3)
        epochs = show("epochs", lambda: c1.number_input("Epochs", **_range("epochs"), key=f"f_epochs{k}"))
        lr = show(
            "lr",
            lambda: c2.number_input("Learning rate", **_range("lr"), step=1e-4, format="%.5f", key=f"f_lr{k}"),
        )
        batch = show("batch", lambda: c3.number_input("Batch size", **_range("batch_size"), key=f"f_batch{k}"))
        mnist_here = full_mnist_here()

        def source_name(source: str) -> str:
            if source == "mnist" and not mnist_here:
                return SOURCE_NAMES[source] + " · not on this server"
            return SOURCE_NAMES[source]

        c1, c2 = st.columns([3, 2])
        data = show("data", lambda: c1.selectbox("Data", SOURCES, format_func=source_name, key=f"f_data{k}"))
        label = c2.text_input("Run name (optional)", max_chars=40, key=f"f_label{k}")
        extra: dict = {}
        if "alpha_init" in MODELS[model].settings:  # cross-stitch: the alphas are the point, kept in sight
            c1, c2 = st.columns(2)
            extra["alpha_init"] = show(
                "ainit",
                lambda: c1.selectbox(
                    "Alpha initialisation",
                    list(ALPHA_INITS),
                    key=f"f_ainit{k}",
                    help="convex-0.9: 0.9 same-task / 0.1 other-task (best in the paper)",
                ),
            )
            extra["alpha_lr_mult"] = show(
                "amult",
                lambda: c2.number_input(
                    "Alpha learning-rate multiplier",
                    **_range("alpha_lr_mult"),
                    key=f"f_amult{k}",
                    help="The paper used 100 to 1000.",
                ),
            )
        # Start sits above the rarely changed settings, so on a projector it and the live curves it
        # starts are both in view without scrolling; a form submits every field wherever it is.
        submitted = st.form_submit_button("Start training", type="primary", key=f"train_submit{k}")
        with st.expander("More settings: optimiser, seeds, validation split, fewer digits, precision, GPU"):
            c1, c2 = st.columns(2)
            optimizer = show("opt", lambda: c1.selectbox("Optimiser", OPTIMIZERS, key=f"f_opt{k}"))
            weight_decay = show(
                "wd",
                lambda: c2.number_input(
                    "Weight decay", **_range("weight_decay"), step=1e-4, format="%.5f", key=f"f_wd{k}"
                ),
            )
            c1, c2, c3 = st.columns(3)
            seed = show("seed", lambda: c1.number_input("Seed", **_range("seed"), key=f"f_seed{k}"))
            most = max(1, min(MAX_SEEDS, get_runner().limits.per_owner))  # a student's cap on queued runs
            n_seeds = c2.number_input(
                "Runs (seeds)",
                1,
                most,
                key=f"f_nseeds{k}",
                help="Queue one run per seed (seed, seed + 1, ...). Compare then shows the mean ± std over "
                "them and the curves with a band: a difference smaller than the spread between seeds is noise. "
                f"At most {most} at once on this server.",
            )
            val_split = show(
                "val",
                lambda: c3.number_input(
                    "Validation digits",
                    **_range("val_split"),
                    step=1000,
                    key=f"f_val{k}",
                    help="Hold out this many training digits to pick the best epoch on; the test set is then "
                    "scored once, at the end. 0 keeps the reference studies' choice: the best epoch is picked "
                    "on the test set, which flatters the result a little.",
                ),
            )
            train_limit = show(
                "limit",
                lambda: st.number_input(
                    "Use only the first N training digits (0 = all)",
                    **_range("train_limit"),
                    step=1000,
                    key=f"f_limit{k}",
                ),
            )
            c1, c2 = st.columns(2)
            extra["precision"] = show(
                "prec",
                lambda: c1.selectbox(
                    "Precision",
                    PRECISIONS,
                    key=f"f_prec{k}",
                    help=(
                        "auto: bf16 where this machine has it natively and it pays (the CNN, about 2x; the first "
                        "layer of the MLPs, 1.4-1.8x, same accuracy); fp32 everywhere else. fp32: full precision."
                    ),
                ),
            )
            if family == "cnn":
                extra["channels_last"] = show("cl", lambda: c2.checkbox("channels_last memory layout", key=f"f_cl{k}"))
            cuda = torch.cuda.is_available()
            use_gpu = st.toggle(
                "Train on the GPU",
                disabled=not cuda,
                key=f"f_gpu{k}",
                help=None if cuda else "No CUDA GPU on this server, so training runs on the CPU.",
            )
            if not cuda:
                st.caption("GPU: not available on this server (no CUDA device found); training runs on the CPU.")
        with st.expander("Loss weights and learning-rate schedule"):
            weighting = show(
                "weighting",
                lambda: st.selectbox(
                    "Loss weighting",
                    weightings_for(model),
                    format_func=lambda n: WEIGHTINGS[n].title,
                    key=f"f_weighting{k}",
                    help="How the task losses become one update. Static: the weights below. The others learn "
                    "or compute weights as training goes (scaled by the weights below); the Train page plots "
                    "them per epoch. The gradient methods (GradNorm, PCGrad, MGDA, CAGrad, IMTL-G, Aligned-MTL, "
                    "UPGrad) work on each task's gradient on the shared layers: one extra backward per task.",
                ),
            )
            weights = {t: state[f"f_w_{t}{k}"] for t in TASKS}
            if "weights" not in hidden:
                # Three to a row: five side by side were too narrow to read in the form's column.
                for start in range(0, len(TASKS), 3):
                    for col, t in zip(st.columns(3), list(TASKS)[start : start + 3]):
                        weights[t] = col.number_input(t, **_range("loss_weights"), step=0.5, key=f"f_w_{t}{k}")
            c1, c2, c3 = st.columns(3)
            scheduler = show(
                "sched",
                lambda: c1.selectbox(
                    "Schedule",
                    ["none", "step"],
                    key=f"f_sched{k}",
                    help="step: multiply the LR by gamma every N epochs (StepLR)",
                ),
            )
            step_size = show(
                "step", lambda: c2.number_input("Step every N epochs", **_range("step_size"), key=f"f_step{k}")
            )
            gamma = show("gamma", lambda: c3.number_input("Gamma", **_range("gamma"), step=0.05, key=f"f_gamma{k}"))
    if not submitted:
        return None
    if data == "mnist" and not mnist_here:
        st.error(
            "Full MNIST is not on this server and cannot be downloaded from here. Choose **auto** or the "
            "**embedded subset** (real digits too), or ask whoever runs the server to add MNIST."
        )
        return None
    return dict(
        model=model,
        tasks=tuple(tasks),
        epochs=int(epochs),
        lr=float(lr),
        batch_size=int(batch),
        optimizer=optimizer,
        weight_decay=float(weight_decay),
        seed=int(seed),
        data=data,
        train_limit=int(train_limit),
        val_split=int(val_split),
        n_seeds=int(n_seeds),
        device="cuda" if use_gpu else "cpu",
        loss_weights={t: w for t, w in weights.items() if t in tasks and w != 1.0},
        loss_weighting=weighting,
        scheduler=scheduler,
        step_size=int(step_size),
        gamma=float(gamma),
        label=plain_text(label, LABEL_MAX),
        **extra,
    )


def seed_runs(config: TrainConfig, label: str, n_seeds: int) -> tuple[list[TrainConfig], list[str]]:
    """The runs one Start queues: `config` over `n_seeds` seeds, each named with its seed when there are
    several (Compare groups them back into one configuration)."""
    configs = config.over_seeds(n_seeds)
    if n_seeds == 1:
        return configs, [label]
    return configs, [f"{label or config.model} · seed {c.seed}" for c in configs]


def share_link_ui(config: TrainConfig, key: str) -> None:
    """A link that opens the Train page with `config` in the form; optionally with controls hidden."""
    with st.popover("🔗 Link to these settings"):
        hide = st.multiselect(
            "Hide these controls (a focused exercise)", list(HIDEABLE), key=f"hide_{key}", placeholder="none"
        )
        st.code(link_to(str(st.context.url or ""), config, tuple(hide)), language=None, wrap_lines=True)
        st.caption("Anyone who opens it gets these settings in the Train form (their own runs, as always).")


def apply_link_ui() -> None:
    """Settings that arrived in the address (a shared link) go into the form once; the address keeps
    only the `?u=` of this browser, so a reload does not undo what the student changed since."""
    params = {name: st.query_params[name] for name in st.query_params if name in LINK_KEYS}
    for name in params:
        del st.query_params[name]
    if (sentence := settings_without_model(params)) is not None:
        st.warning(md_escape(sentence))
        return
    if not params:
        if lock := pending_exercise_lock():  # a reload keeps an exercise link's lock (dashboard/identity.py)
            load_into_form(*lock)
        return
    try:
        config = config_from_query(params)
    except ConfigError as exc:
        st.warning(f"This link's settings cannot be used ({md_escape(exc)}). The form shows the reference recipe.")
        return
    load_into_form(config, hidden_from_query(params))
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
