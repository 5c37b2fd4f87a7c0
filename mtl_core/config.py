"""`TrainConfig`: every training choice in one frozen, validated record, with the two reference presets, and
`CONTROLS`: how people set each field (the Train form's widget, the share link's name, the command-line flag).

Defaults live here only; the dashboard's widgets and the CLI take theirs from it, and a saved run
stores `asdict(config)` so a model can be rebuilt from its file.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from mtl_core.data import SOURCES
from mtl_core.models import ALPHA_INITS, MODELS, get_model_spec, shares_parameters
from mtl_core.tasks import OWN_TASK_HELP, PAIR_TASKS, TASKS, is_task
from mtl_core.text import plain_text, shown
from mtl_core.weighting import WEIGHTINGS

OPTIMIZERS = ("adam", "adamw", "sgd")
LENET_LR = 0.01  # the MultiMNIST recipe's SGD learning rate (BENCHMARKS.md: the table it reproduces)
SCHEDULERS = ("none", "step")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "auto")
PATHS = ("auto", "autograd")  # auto: the hand-written fast step where one exists (mtl_core/training/fastpath.py)


class ConfigError(ValueError):
    """A training configuration that cannot run; the message lists every reason. It may quote a link or
    a model file, so it is plain text (mtl_core/text.py), bounded."""

    def __init__(self, message: str = "") -> None:
        super().__init__(plain_text(message, 2000))


@dataclass(frozen=True)
class TrainConfig:
    model: str = "hard"
    tasks: tuple[str, ...] | None = None  # None: the model's default tasks; empty is an error
    epochs: int = 20
    lr: float = 1e-3
    batch_size: int = 128
    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9  # SGD only
    scheduler: str = "none"
    step_size: int = 5
    gamma: float = 0.5
    loss_weights: dict[str, float] = field(default_factory=dict)  # missing tasks weigh 1
    loss_weighting: str = "static"  # or "uncertainty" (learned per-task weights, Kendall et al. 2018)
    seed: int = 0
    device: str = "auto"
    data: str = "auto"
    alpha_init: str = "identity"  # cross-stitch only
    alpha_lr_mult: float = 1.0  # cross-stitch only; the paper used 1e2 to 1e3
    precision: str = "fp32"  # "bf16": autocast (the fast step: its first layer); "auto": bf16 where native and it pays
    channels_last: bool = False  # CNN only
    train_limit: int = 0  # use only the first N training digits (0: all)
    max_batches: int = 0  # stop each epoch after N batches (0: all); a dry run
    # Hold out N training digits to pick the best epoch on, and score the test set once at the end.
    # 0 keeps the reference studies' own choice: the best epoch is picked on the test set.
    val_split: int = 0
    # Stop once the epoch-picking score has not improved for N epochs (0: train every epoch). The best
    # epoch is kept either way; the MultiMNIST table uses it, its LeNets peaking well before epoch 100.
    patience: int = 0
    path: str = "auto"  # "autograd" turns the hand-written fast step off (same maths, slower)

    def __post_init__(self) -> None:
        if self.tasks is None:
            default = get_model_spec(self.model).default_tasks if self.model in MODELS else ()
            object.__setattr__(self, "tasks", default)
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "loss_weights", {k: float(v) for k, v in dict(self.loss_weights).items()})
        problems = self.problems()
        if problems:
            raise ConfigError("; ".join(problems))

    @classmethod
    def preset(cls, model: str, **overrides: Any) -> TrainConfig:
        """The reference recipe for a model: the MTL-vs-STL study for the MLPs, the tutorial for the CNN."""
        if model not in MODELS:
            raise ConfigError(f"unknown model {shown(model)}; valid models: {', '.join(MODELS)}")
        # precision "auto": bf16 only where the hardware has it and it pays (steps.resolve_precision).
        base: dict[str, Any] = {"model": model, "epochs": 20, "lr": 1e-3, "batch_size": 128, "precision": "auto"}
        if MODELS[model].family == "cnn":
            tasks = overrides.get("tasks") or MODELS[model].default_tasks
            base.update(
                epochs=10,
                scheduler="step",
                step_size=5,
                gamma=0.5,
                # The tutorial's x10 on the value regression, where the chosen tasks include it.
                loss_weights={"value": 10.0} if "value" in tasks else {},
                channels_last=True,
            )
        if MODELS[model].family == "lenet":
            # Sener & Koltun's MultiMNIST recipe: SGD with momentum 0.9, batch 256, 100 epochs, the learning
            # rate times 0.85 every 10 epochs (their train_multi_task.py), on MultiMNIST. Like the CNN's,
            # channels_last and (precision "auto") bf16 where native: 2.8x a step on this project's CPUs.
            base.update(
                data="multimnist",
                epochs=100,
                optimizer="sgd",
                lr=LENET_LR,
                batch_size=256,
                scheduler="step",
                step_size=10,
                gamma=0.85,
                channels_last=True,
            )
        base.update(overrides)
        return cls(**base)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config fields: {', '.join(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tasks"] = list(self.tasks)
        return d

    def replace(self, **changes: Any) -> TrainConfig:
        return replace(self, **changes)

    def over_seeds(self, n: int) -> list[TrainConfig]:
        """This config trained `n` times: seeds seed, seed + 1, ..., everything else the same."""
        if not isinstance(n, int) or n < 1:
            raise ConfigError(f"the number of seeds must be a whole number of at least 1 (got {n!r})")
        return [self.replace(seed=self.seed + i) for i in range(n)]

    def weight(self, task: str) -> float:
        return self.loss_weights.get(task, 1.0)

    def problems(self) -> list[str]:
        """Every reason this config cannot run (empty when it can)."""
        p: list[str] = []

        def check_int(name: str, lo: int, hi: int) -> None:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                p.append(f"{name} must be a whole number from {lo} to {hi:,} (got {v!r})")

        def check_float(name: str, lo: float, hi: float, lo_open: bool = False) -> None:
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            ok = ok and (lo < v if lo_open else lo <= v) and v <= hi
            if not ok:
                bound = f"{'above' if lo_open else 'from'} {lo:g} {'and at most' if lo_open else 'to'} {hi:g}"
                p.append(f"{name} must be a number {bound} (got {v!r})")

        def check_choice(name: str, choices: Any) -> None:
            v = getattr(self, name)
            if v not in choices:
                p.append(f"unknown {name} {shown(v)}; valid: {', '.join(choices)}")

        check_choice("model", MODELS)
        bad = [t for t in self.tasks if not is_task(t)]
        if bad:
            p.append(
                f"unknown task(s) {', '.join(map(shown, bad))}; valid tasks: {', '.join(TASKS)}, or {OWN_TASK_HELP}"
            )
        if not self.tasks:
            p.append("choose at least one task")
        pair = [t for t in self.tasks if t in PAIR_TASKS]
        if pair and self.data != "multimnist":
            p.append(f"task(s) {', '.join(pair)} need two digits per image: choose the MultiMNIST data (multimnist)")
        if len(set(self.tasks)) != len(self.tasks):
            p.append(f"tasks repeat: {', '.join(self.tasks)}")
        check_int("epochs", 1, 500)
        check_float("lr", 0.0, 10.0, lo_open=True)
        check_int("batch_size", 1, 65536)
        check_choice("optimizer", OPTIMIZERS)
        check_float("weight_decay", 0.0, 1.0)
        check_float("momentum", 0.0, 0.999)
        check_choice("scheduler", SCHEDULERS)
        check_int("step_size", 1, 500)
        check_float("gamma", 0.0, 1.0, lo_open=True)
        for task, w in self.loss_weights.items():
            if task not in self.tasks:
                p.append(f"loss weight given for {shown(task)}, which is not one of the tasks")
            elif not (math.isfinite(w) and 0 <= w <= 1000):
                p.append(f"loss weight of {shown(task)} must be from 0 to 1000 (got {w!r})")
        if self.tasks and self.loss_weights and all(self.weight(t) == 0 for t in self.tasks):
            p.append("at least one loss weight must be above 0")
        check_choice("loss_weighting", WEIGHTINGS)
        check_int("seed", 0, 2**31 - 1)
        check_choice("device", DEVICES)
        check_choice("data", SOURCES)
        check_choice("alpha_init", ALPHA_INITS)
        check_float("alpha_lr_mult", 0.0, 1e4, lo_open=True)
        check_choice("precision", PRECISIONS)
        if not isinstance(self.channels_last, bool):
            p.append(f"channels_last must be true or false (got {self.channels_last!r})")
        check_int("train_limit", 0, 10_000_000)
        check_int("max_batches", 0, 10_000_000)
        check_int("val_split", 0, 10_000_000)
        check_int("patience", 0, 500)
        check_choice("path", PATHS)
        return p


@dataclass(frozen=True)
class Control:
    """How people set one TrainConfig field. The Train form (dashboard/forms.py) draws the controls in table
    order, a section at a time, those with the same `row` side by side; a share link (dashboard/links.py)
    carries the field as `name=`; the command line (mtl_core/cli.py) takes it as `flag`."""

    field: str
    name: str  # the link parameter, the form's widget key (f_<name>_<model>) and what a link's hide= names
    label: str = ""
    section: str = ""  # the form's part: "main", "more" or "loss"; "": not in the form
    row: str = ""
    width: int = 1  # its share of the row
    # The form's range, also a link's: a link can only hold what the form can show. Some are narrower than
    # what TrainConfig accepts (`problems()`), which code and the command line may use.
    bounds: tuple[int, int] | tuple[float, float] | None = None
    choices: tuple[str, ...] = ()
    step: float | None = None
    format: str | None = None
    help: str = ""
    link: bool = True
    flag: str = ""  # "": not on the command line
    flag_help: str | None = None
    metavar: str | None = None
    family: str = ""  # only models of this family (mtl_core/models/__init__.py); "conv": every one but the MLPs
    setting: str = ""  # only models whose builder takes this setting (ModelSpec.settings)

    @property
    def kind(self) -> str:
        """The field's type as TrainConfig writes it ("int", "float", "bool", "str", ...)."""
        return TrainConfig.__dataclass_fields__[self.field].type

    def applies(self, model: str) -> bool:
        spec = MODELS[model]
        family = spec.family == self.family or (self.family == "conv" and spec.family != "mlp")
        return (not self.family or family) and (not self.setting or self.setting in spec.settings)

    def cast(self, value: Any) -> Any:
        """`value` (a widget's, a parsed flag's) as the field holds it."""
        if self.field == "tasks":
            return tuple(value)
        return {"int": int, "float": float, "bool": bool}.get(self.kind, str)(value)


_CROSS_STITCH = "alpha_init"  # the setting only cross-stitch models take

# In the Train form's order. A new hyperparameter: its TrainConfig field, its check in `problems()`, a row here.
CONTROLS: tuple[Control, ...] = (
    Control("tasks", "tasks", "Tasks", "main", "tasks", choices=tuple(TASKS), flag="--tasks"),
    Control("epochs", "epochs", "Epochs", "main", "basics", bounds=(1, 500), flag="--epochs"),
    Control("lr", "lr", "Learning rate", "main", "basics", bounds=(1e-6, 10.0), step=1e-4, format="%.5f", flag="--lr"),
    Control("batch_size", "batch", "Batch size", "main", "basics", bounds=(1, 8192), flag="--batch-size"),
    Control(
        "data",
        "data",
        "Data",
        "main",
        "data",
        width=3,
        choices=SOURCES,
        help="auto: full MNIST (60,000 / 10,000) where this server has it, else the 5,000 real digits that ship "
        "with the app (4,000 / 1,000). synthetic: random tensors, a smoke test. MultiMNIST: two overlapping "
        "digits per image, for the tasks left and right (the LeNets).",
        flag="--data",
    ),
    # Cross-stitch: the alphas are the point, kept in sight.
    Control(
        "alpha_init",
        "ainit",
        "Alpha initialisation",
        "main",
        "alphas",
        choices=tuple(ALPHA_INITS),
        help="convex-0.9: 0.9 same-task / 0.1 other-task (best in the paper)",
        setting=_CROSS_STITCH,
        flag="--alpha-init",
    ),
    Control(
        "alpha_lr_mult",
        "amult",
        "Alpha learning-rate multiplier",
        "main",
        "alphas",
        bounds=(0.01, 10000.0),
        help="The paper used 100 to 1000.",
        setting=_CROSS_STITCH,
        flag="--alpha-lr-mult",
    ),
    Control("optimizer", "opt", "Optimiser", "more", "optimiser", choices=OPTIMIZERS, flag="--optimizer"),
    Control("weight_decay", "wd", "Weight decay", "more", "optimiser", bounds=(0.0, 1.0), step=1e-4, format="%.5f"),
    Control("seed", "seed", "Seed", "more", "seeds", bounds=(0, 2**31 - 1), flag="--seed"),
    Control(
        "val_split",
        "val",
        "Validation digits",
        "more",
        "seeds",
        bounds=(0, 30000),
        step=1000,
        help="Hold out this many training digits to pick the best epoch on; the test set is then scored once, "
        "at the end. 0 keeps the reference studies' choice: the best epoch is picked on the test set, which "
        "flatters the result a little.",
        flag="--val-split",
        metavar="N",
        flag_help="hold out N training digits to pick the best epoch on; the test set is then scored once "
        "(default 0: picked on the test set, as the reference studies do)",
    ),
    Control(
        "patience",
        "patience",
        "Stop early after N epochs with no better score (0 = never)",
        "more",
        "patience",
        bounds=(0, 500),
        help="Ends the run once the score that picks the best epoch (on the validation digits, if any) has not "
        "improved for this many epochs. The best epoch's weights are kept, as always.",
        flag="--patience",
        metavar="N",
        flag_help="stop once the best-epoch score has not improved for N epochs (default 0: never)",
    ),
    Control(
        "train_limit",
        "limit",
        "Use only the first N training digits (0 = all)",
        "more",
        "limit",
        bounds=(0, 60000),
        step=1000,
        flag="--train-limit",
        flag_help="use only the first N training digits",
    ),
    Control(
        "precision",
        "prec",
        "Precision",
        "more",
        "precision",
        choices=PRECISIONS,
        help="auto: bf16 where this machine has it natively and it pays (the CNN, about 2x; the first layer of "
        "the MLPs, 1.4-1.8x, same accuracy); fp32 everywhere else. fp32: full precision.",
        flag="--precision",
    ),
    Control(
        "channels_last", "cl", "channels_last memory layout", "more", "precision", family="conv", flag="--channels-last"
    ),
    # Not in a link: the GPU belongs to the server that trains, not to the settings passed on.
    Control("device", "gpu", "Train on the GPU", "more", "device", choices=DEVICES, link=False, flag="--device"),
    Control(
        "loss_weighting",
        "weighting",
        "Loss weighting",
        "loss",
        "weighting",
        choices=tuple(WEIGHTINGS),
        help="How the task losses become one update. Static: the weights below. The others learn or compute "
        "weights as training goes (scaled by the weights below); the Train page plots them per epoch. The "
        "gradient methods (GradNorm, PCGrad, MGDA, CAGrad, IMTL-G, Aligned-MTL, UPGrad) work on each task's "
        "gradient on the shared layers: one extra backward per task. MGDA-UB works on each task's gradient "
        "on the shared trunk's output instead (models with one shared trunk).",
        flag="--weighting",
        flag_help=f"how the task losses become one update: {', '.join(WEIGHTINGS)} "
        f"(default: {TrainConfig.loss_weighting})",
    ),
    # One number per task: in a link w_<task>, in the form f_w_<task>_<model>; hide=weights hides them all.
    Control("loss_weights", "weights", "", "loss", "weights", bounds=(0.0, 1000.0), step=0.5, link=False),
    Control(
        "scheduler",
        "sched",
        "Schedule",
        "loss",
        "schedule",
        choices=SCHEDULERS,
        help="step: multiply the LR by gamma every N epochs (StepLR)",
    ),
    Control("step_size", "step", "Step every N epochs", "loss", "schedule", bounds=(1, 500)),
    Control("gamma", "gamma", "Gamma", "loss", "schedule", bounds=(0.01, 1.0), step=0.05),
    # A dry run, for the command line only: a link holds only what the form shows.
    Control("max_batches", "max_batches", link=False, flag="--max-batches", flag_help="batches per epoch (a dry run)"),
)
# TrainConfig fields no control sets, and why.
NOT_CONTROLS = {
    "model": "it picks the recipe every other value starts from: the form's model picker, a link's model=, "
    "--model (required); each reads it before the rest",
    "momentum": "SGD only; its default 0.9 is the usual one, and nothing offers it yet",
    "path": "turns the hand-written fast step off: for tests and benchmarks, set in code",
}


def controls(model: str | None = None) -> tuple[Control, ...]:
    """The table, in the form's order; with `model`, only the controls that apply to it."""
    return CONTROLS if model is None else tuple(c for c in CONTROLS if c.applies(model))


def weightings_for(model: str) -> list[str]:
    """The loss weightings `model` can take: methods that balance the shared parameters' gradients need a
    model that shares some."""
    return [n for n, m in WEIGHTINGS.items() if weighting_fits(m, model)]


def weighting_fits(method, model: str) -> bool:
    """Whether a loss weighting (a WEIGHTINGS class) can train `model`: the methods that balance gradients
    on shared parameters need some, MGDA-UB needs one shared trunk whose output it reads."""
    if method.needs_representation:
        return MODELS[model].sharing == "trunk"
    return not method.needs_shared or shares_parameters(model)


def control(field: str) -> Control:
    return next(c for c in CONTROLS if c.field == field)


# The form's range of each number it asks for, by TrainConfig field (from CONTROLS).
FORM_RANGES: dict[str, tuple[int, int] | tuple[float, float]] = {c.field: c.bounds for c in CONTROLS if c.bounds}
