"""Guided lessons for a class: a question, the runs that answer it (small enough to train in seconds to
a minute on a classroom server), where to look, and what to conclude. Each lesson queues its runs in one
click (all or none, like the seed study) or opens its first run in the Train form to change it first."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from dashboard.forms import load_into_form
from dashboard.links import link_to
from dashboard.state import client_address, get_runner, owner_id
from mtl_core.config import TrainConfig
from mtl_core.jobs.runner import QueueFull
from mtl_core.store.runs import StoreUnavailable

QUICK = dict(data="mnist-subset", epochs=5)  # 4,000 real digits: seconds per run for the MLPs


@dataclass(frozen=True)
class Lesson:
    key: str
    question: str
    runs: tuple[tuple[str, TrainConfig], ...]  # (label, config)
    look: str
    conclude: str


LESSONS = (
    Lesson(
        "sharing",
        "Does sharing help? One network for two questions against one network per question.",
        (
            ("lesson: no sharing (STL)", TrainConfig.preset("stl", **QUICK)),
            ("lesson: hard sharing", TrainConfig.preset("hard", **QUICK)),
        ),
        "**Compare**: the parameters bar, the best average accuracy, and Δm (the change per task against "
        "STL; near 0 means no loss).",
        "If hard sharing lands within a few tenths of a percent of STL with about half the parameters, the "
        "two questions (even? multiple of 3?) can use the same features: sharing saved half the network "
        "for free. A clearly negative Δm would mean the tasks compete for the shared trunk.",
    ),
    Lesson(
        "alphas",
        "Do the two tasks help each other? Let cross-stitch units learn how much to share.",
        (
            (
                "lesson: cross-stitch, the paper's settings",
                TrainConfig.preset("cross_stitch", alpha_init="convex-0.9", alpha_lr_mult=500.0, **QUICK),
            ),
        ),
        "**Cross-stitch**: the alpha heat maps from epoch 0 (0.9 / 0.1, as initialised) to the end, and "
        "the sentences under them.",
        "Other-task alphas that grow mean each column reads the other task's features: the tasks help each "
        "other. Alphas that shrink to 0 mean the columns prefer to stay apart. Values outside 0..1 are "
        "allowed: they amplify or subtract features.",
    ),
    Lesson(
        "noise",
        "Is a difference real? The same comparison over two seeds, picked on held-out digits.",
        tuple(
            (f"lesson: {title} · seed {seed}", TrainConfig.preset(model, seed=seed, val_split=500, **QUICK))
            for model, title in (("stl", "no sharing (STL)"), ("hard", "hard sharing"))
            for seed in (0, 1)
        ),
        "**Compare** with *Combine seeds* on: each model is one row of mean ± std, its curve a band, its bar "
        "an error bar; Δm is paired seed by seed. Each run picked its best epoch on 500 held-out training "
        "digits and was scored on the test set once.",
        "A gap between the two rows that is smaller than their ± spread could flip with another seed: it is "
        "noise, not a finding. Only a gap larger than the spread says one model is better; more seeds (More "
        "settings → Runs) make the spread a better estimate.",
    ),
    Lesson(
        "compete",
        "Two digits in one image: do the tasks compete for a shared network?",
        tuple(
            (f"lesson: MultiMNIST, {title}", TrainConfig.preset(model, epochs=5, train_limit=20_000, val_split=2000))
            for model, title in (("stl_lenet", "one LeNet per digit"), ("lenet", "one shared LeNet"))
        ),
        "**Home**: the MultiMNIST pictures (a digit at the upper left, another at the lower right). **Compare**: "
        "left and right accuracy of the two runs, the parameters, and Δm of the shared LeNet against the two "
        "single-task ones.",
        "Reading the left digit and reading the right one need different parts of the same picture. Where the "
        "shared LeNet loses accuracy against one LeNet per digit (a negative Δm), the tasks competed for its "
        "50 shared features; the Pareto front tab on Compare then shows how weighting the two losses trades "
        "one digit against the other.",
    ),
    Lesson(
        "hurt",
        "When does sharing hurt? Add a task that nothing can learn.",
        tuple(
            (
                f"lesson: hard sharing, {title} · seed {seed}",
                TrainConfig.preset("hard", tasks=tasks, seed=seed, val_split=500, **QUICK),
            )
            for tasks, title in ((("even", "mult3"), "even + mult3"), (("even", "mult3", "noise"), "+ noise"))
            for seed in (0, 1, 2)
        ),  # fmt: skip
        "**Compare** with *Combine seeds* on: the even and mult3 accuracy of the two rows, each mean ± std over "
        "three seeds; the noise column stays near 50 % (chance). **Train**: pick a run with noise and read the "
        "chart *Gradient agreement on the shared layers*: the cosine between noise and the other two tasks.",
        "`noise` is the even labels shuffled across the images: nothing in a digit predicts it, so its head can "
        "only memorise, and the shared trunk spends some of itself on that. If even and mult3 drop by more "
        "than the ± spread when noise joins, sharing with an unrelated task cost them accuracy; a cosine near "
        "0 (or below) says noise pulls the shared layers in directions the others do not need. Expect a small "
        "drop, about as large as the spread between seeds: an unrelated task costs less than one might fear, "
        "and only seeds tell a real drop from luck.",
    ),
    Lesson(
        "four",
        "What does one network learn for four tasks at once?",
        (("lesson: 4-task CNN", TrainConfig.preset("cnn", data="mnist-subset", epochs=3)),),
        "**Draw**: write a digit and read all four answers (even? greater than 4? which digit? its value). "
        "**Compare → Look inside one run**: one confusion matrix per task.",
        "One shared trunk answers four different questions; the answers agree with each other (a drawn 7 "
        "is odd, above 4, a 7, about 7.0) because they come from the same features. Where they disagree, "
        "the digit is usually ambiguous: look at the mistakes first.",
    ),
)


COMPARE_FOCUS = "compare_focus"  # the runs a lesson queued last: what Compare selects when it opens


def queued_sentence(lesson: Lesson) -> str:
    """What every lesson says once its runs are queued: how many, and where to watch and compare them."""
    n = len(lesson.runs)
    what = "its run" if n == 1 else f"its {n} runs"
    return f"Queued {what}. Watch them train on the **Train** page; **Compare** shows them side by side."


def lessons_ui() -> None:
    st.subheader("🎓 Lessons for a class")
    st.caption(
        "Each one queues small runs (4,000 real digits or 20,000 MultiMNIST images, a few epochs) for you: "
        "seconds to a couple of minutes here. "
        "Teachers: share a lesson's link, and every student opens it with the settings in place."
    )
    for lesson in LESSONS:
        # Keyed, so a lesson stays open across the reruns its queued runs cause (an unkeyed one could close).
        with st.expander(lesson.question, key=f"lesson_x_{lesson.key}"):
            st.markdown(
                "**Runs:** " + "; ".join(label.removeprefix("lesson: ") for label, _ in lesson.runs) + "\n\n"
                f"**Where to look:** {lesson.look}\n\n**What to conclude:** {lesson.conclude}"
            )
            c1, c2, c3 = st.columns(3)
            if c1.button("▶ Queue the runs", key=f"lesson_queue_{lesson.key}", type="primary"):
                try:
                    ids = get_runner().submit_many(
                        [c for _, c in lesson.runs], owner_id(), [label for label, _ in lesson.runs],
                        client=client_address(),
                    )  # fmt: skip
                except (QueueFull, StoreUnavailable) as exc:
                    st.warning(str(exc))
                else:
                    st.session_state[COMPARE_FOCUS] = ids  # Compare opens on exactly these runs
                    done = queued_sentence(lesson)
                    st.session_state[f"lesson_done_{lesson.key}"] = done
                    st.toast(done)
            if done := st.session_state.get(f"lesson_done_{lesson.key}"):
                st.success(done)  # every lesson confirms the same way, and it stays until the page is left
            first = lesson.runs[0][1]
            if c2.button("✎ Open in the Train form", key=f"lesson_open_{lesson.key}", on_click=load_into_form,
                         args=(first,)):  # fmt: skip
                st.switch_page("pages/train.py")
            with c3.popover("🔗 Link"):
                st.code(link_to(str(st.context.url or ""), first), language=None, wrap_lines=True)
