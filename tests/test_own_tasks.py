"""Tasks students design (NAME=DIGITS) and the built-in `noise` task: labels, checks, the form, the command
line, the Compare table; and `noise` stays at chance on the test set."""

from __future__ import annotations

import json

import pytest
import torch

from mtl_core.analysis import compare_rows, group_rows, ordered_columns
from mtl_core.cli import main as cli_main
from mtl_core.config import ConfigError, TrainConfig
from mtl_core.models import build_model, count_parameters
from mtl_core.store.runs import RunStore
from mtl_core.tasks import TASKS, get_task, is_task, make_targets
from mtl_core.training.loop import Training


def test_an_own_task_answers_yes_for_its_digits():
    t = make_targets(torch.arange(10), ("loop=0689", "small=012"))
    assert t["loop=0689"].tolist() == [1, 0, 0, 0, 0, 0, 1, 0, 1, 1]
    assert t["small=012"].tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    task = get_task("loop=0689")
    assert (task.kind, task.classes, task.title) == ("binary", ("not loop", "loop"), "loop: is it one of 0 6 8 9?")
    # On MultiMNIST it reads the left digit, like every task read off one digit.
    assert make_targets(torch.tensor([[6, 1], [1, 6]]), ("loop=0689",))["loop=0689"].tolist() == [1, 0]


@pytest.mark.parametrize(
    "spec",
    [
        "loop",
        "loop=",
        "=0689",
        "Loop=0689",
        "loop=0068",
        "loop=0123456789",
        "lo op=12",
        "loop=12a",
        "even",
        "x" * 17 + "=1",
    ],
)
def test_what_is_not_an_own_task_is_refused_with_the_rule(spec):
    if spec == "even":  # a built-in name is the built-in task, never a new one
        assert get_task("even") is TASKS["even"]
        return
    assert not is_task(spec)
    with pytest.raises(ConfigError, match="a name, =, and the digits that answer yes"):
        TrainConfig(model="hard", tasks=("even", spec))


def test_an_own_task_gets_a_head_like_any_binary_task():
    assert count_parameters(build_model("hard", ("even", "loop=0689"))) == count_parameters(build_model("hard"))
    out = build_model("cnn", ("digit", "loop=0689"))(torch.zeros(2, 1, 28, 28))
    assert out["loop=0689"].shape == (2, 2)


def test_noise_is_balanced_and_unrelated_to_the_digit():
    digits = torch.arange(10).repeat(500)
    noise = make_targets(digits, ("noise",))["noise"]
    assert noise.float().mean().item() == pytest.approx(0.5, abs=0.01)
    for d in range(10):  # every digit answers "1" about half the time: nothing in the image predicts it
        assert noise[digits == d].float().mean().item() == pytest.approx(0.5, abs=0.1)
    assert torch.equal(noise, make_targets(digits, ("noise",))["noise"])  # fixed: the same every time


def test_noise_stays_at_chance_on_the_test_set_while_its_partner_learns(real_data):
    data = real_data.limited(8000, 2000)
    config = TrainConfig.preset("hard", tasks=("even", "noise"), epochs=3, data="synthetic")
    training = Training(config, data)
    last = list(training.records())[-1]
    assert last["metrics"]["even"]["acc"] > 0.9
    assert abs(last["metrics"]["noise"]["acc"] - 0.5) < 0.04  # 2,000 test digits: chance is 0.5 +- 0.011


def test_the_command_line_takes_own_tasks_and_noise(tmp_path, synthetic, monkeypatch, capsys):
    out = tmp_path / "run.json"
    code = cli_main(
        ["train", "--model", "hard", "--data", "synthetic", "--tasks", "even", "loop=0689", "noise",
         "--epochs", "1", "--json", str(out)]
    )  # fmt: skip
    assert code == 0
    record = json.loads(out.read_text())["history"][0]
    assert set(record["metrics"]) == {"even", "loop=0689", "noise"}
    assert cli_main(["train", "--model", "hard", "--data", "synthetic", "--tasks", "loop=0068"]) == 2
    assert "unknown task(s) 'loop=0068'" in capsys.readouterr().err


def test_compare_shows_an_own_tasks_column_in_order(synthetic):
    from test_pages import stored_run  # tests/test_pages.py: a run trained here, stored as a worker would

    run_id = stored_run("hard", synthetic, tasks=("even", "loop=0689"))
    run = RunStore().get_run(run_id)
    (row,) = compare_rows([run])
    assert row["loop=0689 acc %"] == pytest.approx(100 * run["best"]["loop=0689"]["acc"], abs=0.01)
    (grouped,) = group_rows([[run]], [run])
    columns = ordered_columns([grouped])
    assert columns.index("even acc %") < columns.index("loop=0689 acc %")


def test_the_form_takes_a_typed_own_task():
    from test_pages import open_page

    at = open_page("pages/train.py")
    at.radio(key="train_model").set_value("hard").run()
    at.selectbox(key="f_data_hard").set_value("synthetic")
    at.multiselect(key="f_tasks_hard").set_value(["even", "loop=0689"])
    at.button(key="train_submit_hard").click().run()
    assert not at.exception and not at.error
    (run,) = RunStore().list_runs()
    assert run["config"]["tasks"] == ["even", "loop=0689"]


def test_the_lesson_on_a_task_that_hurts_differs_only_by_noise_over_three_seeds():
    from dashboard.lessons import LESSONS

    (lesson,) = [x for x in LESSONS if x.key == "hurt"]
    configs = [c for _, c in lesson.runs]
    plain = [c for c in configs if "noise" not in c.tasks]
    noisy = [c for c in configs if "noise" in c.tasks]
    assert sorted(c.seed for c in plain) == sorted(c.seed for c in noisy) == [0, 1, 2]
    for a, b in zip(plain, noisy):
        assert a.replace(tasks=b.tasks) == b and b.tasks == (*a.tasks, "noise")
        assert a.val_split > 0  # picked on held-out digits: the test set is scored once
