"""One real-data check: a short run on real digits reaches a sensible accuracy."""

from mtl_core.config import TrainConfig
from mtl_core.training.loop import Training


def test_hard_sharing_learns_real_digits(real_data):
    # Full MNIST when ../shared has it (one epoch, ~0.3 s); else the embedded subset (more epochs).
    epochs = 1 if real_data.n_train == 60000 else 8
    training = Training(TrainConfig.preset("hard", epochs=epochs), real_data)
    records = list(training.records())
    assert training.status == "finished"
    assert records[-1]["avg_acc"] > (0.95 if real_data.n_train == 60000 else 0.88), records[-1]["metrics"]
