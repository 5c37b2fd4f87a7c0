"""Time estimates: measured epochs beat guesses; the queue simulation puts runs on free workers."""

import sqlite3

import pytest

from mtl_core.config import TrainConfig
from mtl_core.jobs.estimate import (
    FLOP_RATE,
    SOLVER_STEP_S,
    backward_passes,
    counted_flops,
    duration_words,
    epoch_estimate,
    queue_spot,
    run_estimate,
)


def _finished(store, model="hard", seconds=(2.0, 4.0, 3.0), epochs=20, source="mnist", batch=128):
    cfg = TrainConfig.preset(model, epochs=epochs, batch_size=batch).to_dict()
    rid = store.create_run(cfg)
    store.claim_next("w")
    store.mark_started(rid, "w", 1, source, "cpu")
    for i, s in enumerate(seconds, 1):
        store.add_epoch(rid, {"epoch": i, "seconds": s}, worker="w")
    return rid


def test_a_measured_epoch_is_the_median_of_this_servers_runs(store):
    cfg = TrainConfig.preset("hard").to_dict()
    guess = epoch_estimate(store, cfg, "mnist", 60_000)
    assert not guess.measured and guess.seconds > 0 and guess.words().startswith("roughly")
    _finished(store, seconds=(2.0, 4.0, 3.0))
    est = epoch_estimate(store, cfg, "mnist", 60_000)
    assert est.measured and est.seconds == pytest.approx(3.0)
    assert run_estimate(store, cfg, "mnist", 60_000).seconds == pytest.approx(60.0)  # 20 epochs
    # Other data or batch sizes are not comparable: still a guess for them.
    assert not epoch_estimate(store, cfg, "mnist-subset", 4_000).measured
    assert not epoch_estimate(store, {**cfg, "batch_size": 8}, "mnist", 60_000).measured


def test_guesses_scale_with_digits_and_small_batches(store):
    cfg = TrainConfig.preset("hard").to_dict()
    full = epoch_estimate(store, cfg, "mnist", 60_000).seconds
    assert epoch_estimate(store, cfg, "mnist-subset", 6_000).seconds == pytest.approx(full / 10)
    assert epoch_estimate(store, {**cfg, "batch_size": 16}, "mnist", 60_000).seconds > 4 * full


def test_queue_spot_fills_free_workers_first(store):
    _finished(store, seconds=(10.0,))  # a measured hard epoch: 10 s; this run stays "running" (1 of 20 done)
    cfg = TrainConfig.preset("hard", epochs=2).to_dict()
    a, b, c = (store.create_run(cfg, owner=o) for o in "abc")
    runs = {r: store.get_run(r) for r in (a, b, c)}
    # Two workers: one busy for 19 more epochs (190 s), one free.
    spot_a = queue_spot(store, runs[a], workers=2, data_source="mnist", n_train=60_000)
    assert (spot_a.position, spot_a.wait_s, spot_a.measured) == (1, 0.0, True)
    spot_b = queue_spot(store, runs[b], workers=2, data_source="mnist", n_train=60_000)
    assert spot_b.position == 2 and spot_b.wait_s == pytest.approx(20.0)  # after a's 2 epochs
    spot_c = queue_spot(store, runs[c], workers=2, data_source="mnist", n_train=60_000)
    assert spot_c.position == 3 and spot_c.wait_s == pytest.approx(40.0)
    # One worker: everything waits for the running job's 190 s.
    assert queue_spot(store, runs[a], 1, "mnist", 60_000).wait_s == pytest.approx(190.0)


def test_a_queued_runs_wait_counts_down_between_the_running_runs_epochs(store):
    """The wait is asked again every few seconds: it falls with the time since the running run's last
    epoch, instead of standing still for a whole epoch, and never passes the next epoch's end."""
    rid = _finished(store, seconds=(10.0,))  # running: 1 of 20 epochs done, 10 s each
    started = store.get_run(rid)["started"]
    waiting = store.get_run(store.create_run(TrainConfig.preset("hard", epochs=2).to_dict(), owner="b"))
    at = [queue_spot(store, waiting, 1, "mnist", 60_000, now=started + t).wait_s for t in (10, 13, 16, 19.9, 40)]
    assert at[:3] == pytest.approx([190.0, 187.0, 184.0])  # 19 epochs left; 3 s, then 6 s into the 2nd
    assert at[3] == pytest.approx(180.5) and at[4] == pytest.approx(180.5)  # at most 95 % of that epoch


def test_duration_words():
    assert [duration_words(s) for s in (0.2, 42, 150, 7200)] == ["1 s", "42 s", "2 min", "2.0 h"]


def test_epoch_estimates_ignore_unfinished_json(store):
    rid = _finished(store, seconds=(5.0,))
    with sqlite3.connect(store.path) as db:  # an epoch record without seconds (older stores) is skipped
        db.execute("INSERT INTO epochs (run_id, epoch, record) VALUES (?, 2, '{\"epoch\": 2}')", (rid,))
    assert epoch_estimate(store, TrainConfig.preset("hard").to_dict(), "mnist", 60_000).seconds == 5.0


def test_runs_queued_together_share_the_workers():
    from mtl_core.jobs.estimate import parallel_seconds

    assert parallel_seconds([10, 5, 5], workers=1) == 20
    assert parallel_seconds([10, 5, 5], workers=2) == 10
    assert parallel_seconds([5, 10, 5], workers=3) == 10
    assert parallel_seconds([4, 4, 4, 4], workers=2) == 8
    assert parallel_seconds([], workers=2) == 0


def test_estimates_know_what_a_loss_weighting_and_a_validation_split_cost(store):
    """A gradient method is never timed by static runs, and its guess counts its backward per task; learned
    loss weights cost more than static ones on the MLPs (they leave the hand-written step); held-out
    digits are scored, not trained on."""
    static = TrainConfig.preset("hard").to_dict()
    pcgrad = {**static, "loss_weighting": "pcgrad"}
    uncertainty = {**static, "loss_weighting": "uncertainty"}
    base = epoch_estimate(store, static, "mnist", 60_000).seconds
    forward, train = counted_flops("hard", ("even", "mult3"))
    scoring = 10_000 * forward / FLOP_RATE["mlp"]  # the epoch's test pass, the same for every weighting
    assert epoch_estimate(store, uncertainty, "mnist", 60_000).seconds - scoring == pytest.approx(3 * (base - scoring))
    # Two tasks: 1 forward + 2 backwards (two forwards each) over 1 + 2, on autograd (x3), and PCGrad's own
    # 2 ms a step (469 batches of 128).
    pcgrad_s = epoch_estimate(store, pcgrad, "mnist", 60_000).seconds - scoring
    assert pcgrad_s == pytest.approx(5 * (base - scoring) + 469 * SOLVER_STEP_S["pcgrad"])
    famo = epoch_estimate(store, {**static, "loss_weighting": "famo"}, "mnist", 60_000).seconds
    assert famo - scoring == pytest.approx(3 * (1 + forward / train) * (base - scoring))  # the batch scored again
    mgda_ub = epoch_estimate(store, {**static, "loss_weighting": "mgda_ub"}, "mnist", 60_000).seconds
    assert mgda_ub - scoring == pytest.approx(3 * (base - scoring))  # its backwards stop at the representation
    cnn = TrainConfig.preset("cnn").to_dict()
    cnn_base = epoch_estimate(store, cnn, "mnist", 60_000).seconds
    assert epoch_estimate(store, {**cnn, "loss_weighting": "uncertainty"}, "mnist", 60_000).seconds == cnn_base
    held_out = epoch_estimate(store, {**static, "val_split": 15_000}, "mnist", 60_000).seconds
    assert held_out == pytest.approx((45_000 * train + 15_000 * forward) / FLOP_RATE["mlp"])
    _finished(store, seconds=(2.0, 2.0))  # static hard-sharing epochs measured here
    assert epoch_estimate(store, static, "mnist", 60_000).measured
    assert not epoch_estimate(store, pcgrad, "mnist", 60_000).measured


def test_the_first_guess_counts_each_layers_multiply_adds():
    """Hard sharing, by hand: 784-64-32 shared, a 32-1 head per task, 2 FLOPs a multiply-add. The backward
    computes each layer's weight gradient and, past the first layer, its input gradient: 2x forward, less
    the first layer's input gradient, which nothing needs."""
    forward = 2 * (784 * 64 + 64 * 32 + 2 * 32 * 1)
    backward = 2 * forward - 2 * 784 * 64
    assert counted_flops("hard", ("even", "mult3")) == (forward, forward + backward)
    assert counted_flops("stl", ("even", "mult3"))[0] == 2 * (784 * 64 + 64 * 32 + 32) * 2  # a network per task
    assert backward_passes("static", 2) == 1 and backward_passes("pcgrad", 4) == 3
    assert backward_passes("mgda_ub", 2) == 1
