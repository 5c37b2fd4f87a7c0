"""Training loop: learns, is deterministic, validates its config, stops on NaN and on request."""

import math

import pytest
import torch
from native_kernel import kernel_device, use_kernel  # tests/native_kernel.py

from mtl_core.config import ConfigError, TrainConfig
from mtl_core.data import make_multimnist
from mtl_core.models import MODELS
from mtl_core.training.loop import Training, iter_train, resolve_device, state_copy


def tiny(model="hard", **kw):
    data = "multimnist" if MODELS[model].family == "lenet" else "synthetic"  # its tasks need pairs of digits
    return TrainConfig.preset(model, epochs=kw.pop("epochs", 3), batch_size=kw.pop("batch_size", 64), data=data, **kw)


def tiny_data(model, synthetic):
    """The synthetic digits, or for the MultiMNIST models the MultiMNIST built from them."""
    return make_multimnist(synthetic) if MODELS[model].family == "lenet" else synthetic


@pytest.mark.parametrize("model", list(MODELS))
def test_training_reduces_loss_on_synthetic(model, synthetic):
    cnn = MODELS[model].family == "cnn"
    records = list(iter_train(tiny(model, epochs=3, max_batches=8 if cnn else 0), tiny_data(model, synthetic)))
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert records[-1]["train_loss_total"] < records[0]["train_loss_total"]
    for r in records:
        assert set(r["metrics"]) == set(TrainConfig.preset(model).tasks)
        assert all(math.isfinite(v) for v in r["train_loss"].values())
        assert r["seconds"] > 0 and r["lr"] > 0
    if "alpha_init" in MODELS[model].settings:  # cross-stitch: 2 units on the MLP, 3 on the CNN, T x T each
        tasks = len(TrainConfig.preset(model).tasks)
        assert len(records[0]["alphas"]) == (3 if cnn else 2) and len(records[0]["alphas"][0]) == tasks
        assert records[0]["alphas"] != records[-1]["alphas"]  # they are learned
    else:
        assert records[0]["alphas"] is None
    if cnn:
        assert {"mae", "rmse", "mae_digits"} <= set(records[0]["metrics"]["value"])


def test_record_is_plain_data(synthetic):
    import json

    record = next(iter_train(tiny("cross_stitch"), synthetic))
    assert json.loads(json.dumps(record)) == record  # floats and lists only, no tensors


def test_same_seed_gives_bitwise_identical_losses(synthetic):
    a = [r["train_loss"] for r in iter_train(tiny("cross_stitch", seed=7), synthetic)]
    b = [r["train_loss"] for r in iter_train(tiny("cross_stitch", seed=7), synthetic)]
    c = [r["train_loss"] for r in iter_train(tiny("cross_stitch", seed=8), synthetic)]
    assert a == b
    assert a != c


def test_best_checkpoint_is_the_best_average_epoch(synthetic):
    training = Training(tiny("hard", epochs=4, lr=0.05), synthetic)
    records = list(training.records())
    best = max(records, key=lambda r: r["avg_acc"])
    assert training.best_epoch == best["epoch"]
    metrics, _ = training.evaluate()  # the model now holds the best epoch's weights
    assert metrics == best["metrics"]
    assert training.summary()["best_avg"] == best["avg_acc"]


def test_lr_schedule_and_alpha_lr(synthetic):
    records = list(iter_train(tiny("hard", epochs=3, scheduler="step", step_size=1, gamma=0.5), synthetic))
    assert [r["lr"] for r in records] == pytest.approx([1e-3, 5e-4, 2.5e-4])
    slow = list(iter_train(tiny("cross_stitch", epochs=1), synthetic))[0]["alphas"]
    fast = list(iter_train(tiny("cross_stitch", epochs=1, alpha_lr_mult=100.0), synthetic))[0]["alphas"]
    moved = lambda a: abs(a[0][0][1])  # noqa: E731 - an off-diagonal alpha starts at 0
    assert moved(fast) > 10 * moved(slow)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"epochs": 0}, "epochs must be a whole number"),
        ({"epochs": 2.5}, "epochs must be a whole number"),
        ({"lr": -1.0}, "lr must be a number above 0"),
        ({"lr": float("nan")}, "lr must be"),
        ({"batch_size": 0}, "batch_size"),
        ({"model": "resnet"}, "unknown model 'resnet'"),
        ({"tasks": ("even", "prime")}, "unknown task"),
        ({"tasks": ("even", "even")}, "tasks repeat"),
        ({"optimizer": "lbfgs"}, "unknown optimizer"),
        ({"device": "tpu"}, "unknown device"),
        ({"loss_weights": {"digit": 2.0}}, "not one of the tasks"),
        ({"loss_weights": {"even": 0.0, "mult3": 0.0}}, "at least one loss weight"),
        ({"alpha_lr_mult": 0.0}, "alpha_lr_mult"),
    ],
)
def test_config_rejects_bad_values_with_a_reason(changes, message):
    base = {"model": "hard", "data": "synthetic", **changes}
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**base)


def test_config_lists_every_problem_and_round_trips():
    with pytest.raises(ConfigError) as e:
        TrainConfig(epochs=0, lr=0)
    assert "epochs" in str(e.value) and "lr" in str(e.value)
    cfg = TrainConfig.preset("cnn", seed=3)
    assert cfg.epochs == 10 and cfg.scheduler == "step" and cfg.weight("value") == 10.0
    assert cfg.tasks == ("digit", "even", "gt4", "value")
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown config fields: colour"):
        TrainConfig.from_dict({"model": "hard", "colour": "red"})


def test_batch_larger_than_data_is_rejected(synthetic):
    with pytest.raises(ConfigError, match="larger than the 512 training digits"):
        Training(tiny(batch_size=1000), synthetic)


def test_cuda_without_gpu_is_a_clear_error(synthetic):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        Training(tiny(device="cuda"), synthetic)


@pytest.mark.parametrize("model_name", list(MODELS))
def test_device_auto_gives_a_gpu_to_the_convolutional_models_only(model_name, synthetic, monkeypatch):
    """Where there is a GPU (faked here: the device chosen, nothing run on it), "auto" puts the CNNs and
    LeNets on it and keeps the MLPs, whose steps are too small for it, on the CPU; without one, everything
    on the CPU."""
    family = MODELS[model_name].family
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto", family).type == ("cpu" if family == "mlp" else "cuda")
    assert resolve_device("cuda", family).type == "cuda"  # asked for: any model
    if family == "mlp":  # a whole run: it trains on the CPU, and its record says so
        training = Training(TrainConfig.preset(model_name, epochs=1, max_batches=2, data="synthetic"), synthetic)
        (record,) = training.records()
        assert training.device.type == "cpu" and training.summary()["device"] == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto", family).type == "cpu"


def test_non_finite_loss_stops_and_keeps_last_good_state(synthetic):
    data = synthetic.limited()  # a copy of the views; poisoned below
    data.train_x = data.train_x.clone()
    # fp32: the data are poisoned in place after epoch 1, and the bf16 step trains on its own copy
    # made at the start (tests/test_fastpath.py poisons a digit before the start for that one).
    training = Training(tiny("hard", epochs=5, precision="fp32", device="cpu"), data)  # poisons the CPU copy
    records = []
    for r in training.records():
        records.append(r)
        good = state_copy(training.model)
        data.train_x[:] = float("nan")  # every batch of the next epoch is poisoned
    assert len(records) == 1
    assert training.status == "diverged"
    assert "non-finite loss" in training.reason and "epoch 2, batch 1" in training.reason
    for k, v in training.model.state_dict().items():
        assert torch.equal(v, good[k]), k
        assert torch.isfinite(v.float()).all()


def test_stop_flag_is_checked_every_batch(synthetic, monkeypatch):
    """On the Python loop and autograd; the C++ loop looks between chunks (tests/test_native.py)."""
    use_kernel("Python", monkeypatch)
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 3  # stop at the 4th batch of epoch 1

    training = Training(tiny("hard", epochs=3, batch_size=16), synthetic, stop=stop)
    assert list(training.records()) == []
    assert training.status == "cancelled" and len(calls) == 4


def test_uncertainty_weighting_learns_per_task_weights(synthetic):
    from mtl_core.weighting import UncertaintyWeighting

    records = list(iter_train(tiny("cnn", epochs=3, max_batches=8, loss_weighting="uncertainty"), synthetic))
    first, last = records[0]["loss_weights"], records[-1]["loss_weights"]
    assert set(first) == {"digit", "even", "gt4", "value"}
    assert first != last  # learned, not fixed
    assert last["value"] != last["digit"]  # the static 10 for value still scales it
    assert records[-1]["train_loss_total"] < records[0]["train_loss_total"]
    w = UncertaintyWeighting({"a": 1.0, "b": 10.0})
    losses = {"a": torch.tensor(2.0), "b": torch.tensor(3.0)}
    assert w(losses).item() == pytest.approx(0.5 * (2.0 + 30.0))  # s = 0 at the start
    assert w.current() == {"a": 0.5, "b": 5.0}


def test_static_weighting_records_the_config_weights(synthetic):
    record = next(iter_train(tiny("hard", loss_weights={"even": 2.0}), synthetic))
    assert record["loss_weights"] == {"even": 2.0, "mult3": 1.0}
    with pytest.raises(ConfigError, match="unknown loss_weighting"):
        TrainConfig(loss_weighting="nashmtl")  # not (yet) in the registry


def test_non_finite_batchnorm_statistics_count_as_divergence(synthetic):
    """A finite training loss can hide inf in BatchNorm's running statistics; such weights must not be kept."""
    training = Training(tiny("cnn", epochs=4, max_batches=4), synthetic)
    records = []
    for r in training.records():
        records.append(r)
        good = state_copy(training.model)
        training.model.trunk[1].running_var[0] = float("inf")  # stays inf through the next epoch
    assert len(records) == 1 and training.status == "diverged"
    assert "running_var" in training.reason and "after epoch 2" in training.reason
    for k, v in training.model.state_dict().items():
        assert torch.equal(v, good[k]), k


def test_best_checkpoint_can_be_an_earlier_epoch(synthetic):
    """Scripted test scores (0.5, 0.9, 0.7): the model must end with epoch 2's weights, not epoch 3's."""
    scores = iter([0.5, 0.9, 0.7])

    class Scripted(Training):
        def evaluate(self):
            metrics, losses = super().evaluate()
            s = next(scores)
            return {t: {"acc": s} for t in metrics}, losses

    training = Scripted(tiny("hard", epochs=3), synthetic)
    states = []
    for _ in training.records():
        states.append(state_copy(training.model))
    assert training.best_epoch == 2 and training.summary()["best_avg"] == 0.9
    final = training.model.state_dict()
    assert all(torch.equal(final[k], states[1][k]) for k in final)
    assert not all(torch.equal(final[k], states[2][k]) for k in final)


@pytest.mark.parametrize("patience, epochs_run", [(0, 7), (2, 5), (3, 6), (4, 7)])
def test_patience_stops_once_the_score_has_not_improved_for_that_many_epochs(synthetic, patience, epochs_run):
    """Scripted scores peak at epoch 3 (a tie at epoch 4 is no improvement): patience 2 ends the run after
    epoch 5, patience 0 or one that outlasts the run trains every epoch. The best epoch is kept either way."""
    scores = iter([0.5, 0.6, 0.9, 0.9, 0.8, 0.7, 0.95])

    class Scripted(Training):
        def evaluate(self):
            metrics, losses = super().evaluate()
            s = next(scores)
            return {t: {"acc": s} for t in metrics}, losses

    training = Scripted(tiny("hard", epochs=7, patience=patience), synthetic)
    records = list(training.records())
    assert len(records) == epochs_run and training.status == "finished"
    assert training.stopped_early == (epochs_run if epochs_run < 7 else 0)
    assert training.best_epoch == (7 if epochs_run == 7 else 3)


@pytest.mark.parametrize("kernel", ["C++", "Python", "autograd"])
def test_how_far_the_epoch_is_can_be_read_while_it_trains(synthetic, kernel, monkeypatch):
    """The worker's heartbeat reports `epoch_done`: it must move through each epoch, on every loop (the
    C++ one reports between its chunks of batches)."""
    from mtl_core.training.steps import NATIVE_CHUNK

    if kernel != "autograd":
        use_kernel(kernel, monkeypatch)
    seen = []
    training = None

    def stop():
        seen.append(training.epoch_done)
        return False

    path = "autograd" if kernel == "autograd" else "auto"
    cfg = tiny("hard", epochs=2, batch_size=8, path=path, device=kernel_device(kernel))
    training = Training(cfg, synthetic, stop=stop, conflict_probes=0)
    list(training.records())
    per_epoch = synthetic.n_train // 8
    assert training.batches_per_epoch == per_epoch
    every = NATIVE_CHUNK if kernel == "C++" else 1
    looks = per_epoch // every
    assert seen[:looks] == [b / per_epoch for b in range(0, per_epoch, every)]
    assert seen[looks] == 0  # the next epoch starts again from the beginning


@pytest.mark.parametrize("model, precision", [("cnn", "bf16"), ("cnn", "fp32"), ("hard", "bf16")])
def test_stored_predictions_agree_with_the_recorded_accuracies_exactly(synthetic, model, precision):
    """The Compare page's confusion matrices come from these; its table from the records. A bf16 CNN
    scored again in fp32 disagreed in the second decimal."""
    import numpy as np

    from mtl_core.analysis import predictions_from_outputs

    training = Training(tiny(model, epochs=2, precision=precision), synthetic)
    list(training.records())
    preds = predictions_from_outputs(training.test_outputs(), synthetic.test_y)
    for task, m in training.best_record["metrics"].items():
        if "acc" in m:
            assert float(np.mean(preds[task]["true"] == preds[task]["pred"])) == pytest.approx(m["acc"], abs=1e-12)


@pytest.mark.parametrize("tasks", [("digit",), ("mult3", "value"), ("digit", "even", "mult3", "gt4", "value")])
@pytest.mark.parametrize("model", list(MODELS))
def test_any_task_subset_trains_on_any_architecture(model, tasks, synthetic):
    """Every model kind takes any subset of the five tasks (its family's heads: logits or one value)."""
    cfg = TrainConfig.preset(model, tasks=tasks, epochs=1, max_batches=2, data="synthetic")
    (record,) = list(iter_train(cfg, synthetic))
    assert set(record["metrics"]) == set(tasks) and math.isfinite(record["train_loss_total"])


# ----------------------------------------------------------------------------- validation split


def test_validation_digits_are_held_out_the_same_for_every_seed(synthetic):
    from dataclasses import replace

    n = synthetic.n_train
    numbered = replace(synthetic, train_x=torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 28, 28))
    rest, (vx, vy) = numbered.split_validation(100)
    assert rest.n_train == n - 100 and len(vy) == 100
    # Together they are the training digits again, each once: nothing held out is trained on.
    ids = torch.cat([rest.train_x[:, 0, 0, 0], vx[:, 0, 0, 0]]).long()
    assert sorted(ids.tolist()) == list(range(n))
    assert torch.equal(rest.train_y, synthetic.train_y[rest.train_x[:, 0, 0, 0].long()])  # labels go along
    again, (vx2, _) = numbered.split_validation(100)
    assert torch.equal(vx, vx2)  # the same digits whatever the run's seed
    assert torch.equal(rest.test_x, synthetic.test_x)
    with pytest.raises(ValueError, match="validation split"):
        synthetic.split_validation(synthetic.n_train)


def test_with_a_validation_split_epochs_are_picked_on_it_and_the_test_set_is_scored_once(synthetic):
    looked_at = []

    class Watched(Training):
        def evaluate(self, split=None):
            looked_at.append(split or self.selection_split)
            return super().evaluate(split)

    training = Watched(tiny("hard", epochs=3, val_split=200, device="cpu"), synthetic)  # scored below on the CPU
    records = list(training.records())
    assert looked_at == ["validation"] * 3 + ["test"]  # the test set once, after the best epoch was picked
    assert {r["split"] for r in records} == {"validation"} and all("val_loss" in r for r in records)
    assert training.data.n_train == synthetic.n_train - 200
    best = max(records, key=lambda r: r["avg_acc"])
    summary = training.summary()
    assert summary["selected_on"] == "validation" and summary["best_epoch"] == best["epoch"]
    assert summary["val_best_avg"] == best["avg_acc"]
    # The picked epoch's numbers are those of the held-out digits, computed here without Training.
    from mtl_core.metrics import predicted_class
    from mtl_core.tasks import make_targets

    _, (vx, vy) = synthetic.split_validation(200)
    training.model.eval()
    with torch.no_grad():
        out = training.model(vx)
    for task, target in make_targets(vy, ("even", "mult3")).items():
        acc = (predicted_class(task, out[task]) == target).float().mean().item()
        assert best["metrics"][task]["acc"] == pytest.approx(acc, abs=1e-6), task
    test_metrics, _ = training.evaluate("test")  # the model holds the picked epoch's weights
    assert summary["best_metrics"] == test_metrics
    assert summary["best_avg"] == pytest.approx(sum(m["acc"] for m in test_metrics.values()) / 2)


def test_without_a_validation_split_the_reference_choice_is_kept_and_said(synthetic):
    training = Training(tiny("hard", epochs=2), synthetic)
    records = list(training.records())
    assert {r["split"] for r in records} == {"test"} and all("test_loss" in r for r in records)
    assert training.summary()["selected_on"] == "test"
    assert training.summary()["best_avg"] == max(r["avg_acc"] for r in records)


def test_a_validation_split_that_leaves_no_batch_is_refused_with_the_numbers(synthetic):
    with pytest.raises(ConfigError, match="leaves 12 of the 512 training digits, less than one batch of 64"):
        Training(tiny("hard", val_split=500), synthetic)
    with pytest.raises(ConfigError, match="val_split must be a whole number"):
        tiny("hard", val_split=-1)


def test_a_gated_model_records_each_tasks_gate_weights_per_expert(synthetic):
    training = Training(tiny("mmoe", epochs=2, device="cpu"), synthetic)  # compared below on the CPU
    for r in training.records():
        assert set(r["gates"]) == {"even", "mult3"}
        for weights in r["gates"].values():
            assert len(weights) == 2 and sum(weights) == pytest.approx(1.0, abs=1e-5)
        # The mean over the test digits, of the model as it is at the end of this epoch.
        with torch.no_grad():
            expected = training.model.gate_weights(synthetic.test_x[:2048])["mult3"].mean(0)
        assert r["gates"]["mult3"] == pytest.approx(expected.tolist(), abs=1e-6)
    assert list(iter_train(tiny("hard", epochs=1), synthetic))[0]["gates"] is None
