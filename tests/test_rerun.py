"""`birdplane rerun`: what one seed's retraining reports (the Ray task's own function, run here)."""

from study.rerun import train_seed
from tests.conftest import correct
from trainables.loop import fit


def test_a_rerun_s_test_numbers_come_from_the_best_epoch_s_weights_and_the_last_ones_beside_them(noisy):
    data, config = noisy.data, noisy.config
    # The same seeded run as the rerun's (fit is bit-identical for a config and seed): its two sets of
    # weights, scored here on the official test split.
    reference = fit(config, data)
    n_test = len(data.test.y)
    best = correct(reference.best_model, config, data.test, data.mean, data.std)
    last = correct(reference.model.state_dict(), config, data.test, data.mean, data.std)
    assert best != last, "the situation this test needs: best and last weights score differently on test"
    outcome = train_seed(config.to_dict(), data)
    assert outcome["best_epoch"] == reference.best_epoch < len(outcome["history"])
    assert round(outcome["test_acc"] * n_test) == best, "test_acc is the best epoch's weights' accuracy"
    assert round(outcome["test_acc_last"] * n_test) == last, "test_acc_last is the last epoch's"
