"""Sener & Koltun's MultiMNIST table on the Compare page: queue every row over seeds, and see ours beside
the published figures, with which differences survive the spread between seeds."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard.state import client_address, get_runner, owner_id
from mtl_core.metrics import mean_std_text
from mtl_core.paper_table import PAPER_EPOCHS, QUICK_EPOCHS, ROWS, differences, table_configs, table_rows
from mtl_core.reference import MULTIMNIST_STUDY
from mtl_core.store.runs import StoreUnavailable


def _cell(mean: float | None, std: float | None) -> str:
    return "–" if mean is None else mean_std_text(mean, std)


def queue_table_ui() -> None:
    with st.expander("Reproduce a published table: Sener & Koltun's MultiMNIST (LeNet, every method over seeds)"):
        c1, c2 = st.columns(2)
        seeds = c1.number_input("Seeds", 1, 5, 3, key="table_seeds")
        epochs = c2.selectbox(
            "Epochs",
            [QUICK_EPOCHS, PAPER_EPOCHS],
            format_func=lambda e: f"{e} (the paper's)" if e == PAPER_EPOCHS else f"{e} (quick, for a lesson)",
            key="table_epochs",
        )
        n = len(ROWS) * int(seeds)
        patience = table_configs(1, int(epochs))[0][1].patience  # 0 where it would outlast the run
        early = (
            f", a run ending once {patience} epochs bring no better validation score (the best epoch is kept)"
            if patience
            else ""
        )
        st.caption(
            f"{n} runs: {', '.join(name for name, *_ in ROWS)}; each on the paper's recipe (SGD with momentum, "
            "batch 256, the learning rate x0.85 every 10 epochs), 6,000 training images held out to pick the "
            f"epoch{early}. More runs than your cap on jobs wait their turn and join the queue as yours end. "
            f"The same from the server's command line: `python -m mtl_core table --seeds {seeds} --epochs {epochs}`."
        )
        if st.button(f"▶ Queue the {n} runs", key="table_queue", type="primary"):
            configs = table_configs(int(seeds), int(epochs))
            try:
                _, now = get_runner().queue_in_turn(configs, owner_id(), client_address())
            except StoreUnavailable as exc:
                st.warning(str(exc))
            else:
                later = f"; the other {n - len(now)} join the queue as yours end" if len(now) < n else ""
                st.success(f"Queued {len(now)} of {n} runs{later}. The table below fills in as they finish.")


def table_ui(runs: list[dict]) -> None:
    rows = table_rows(runs)
    if not any(r.seeds for r in rows):
        return
    st.subheader("MultiMNIST: ours beside the published table")
    sources = list(dict.fromkeys(k for r in rows for k in r.published))
    table = []
    for r in rows:
        line = {"method": r.name, "seeds": r.seeds, "left %": _cell(r.mean["left"], r.std["left"]),
                "right %": _cell(r.mean["right"], r.std["right"])}  # fmt: skip
        for k in sources:
            pub = r.published.get(k)
            line[k] = f"{pub[0]:.2f} / {pub[1]:.2f}" if pub else ""
            close = r.close_to(k) if pub else None
            line[f"close to {k}"] = "" if close is None else ("yes" if close else "no")
        line["epochs"] = r.epochs
        table.append(line)
    st.dataframe(pd.DataFrame(table), hide_index=True, width="stretch")
    found = differences(rows)
    st.caption(
        f"Published: {MULTIMNIST_STUDY['source']}. Ours: test accuracy at the epoch picked on held-out "
        "training images, mean ± std over seeds. Close: within 1 point of the published figure, or within two "
        "standard errors of it. "
        + (
            "Against single task (a difference counts only beyond two standard errors of it): " + "; ".join(found) + "."
            if found
            else "With two seeds or more per row, this says which differences survive the spread."
        )
    )
