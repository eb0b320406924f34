"""A model bundle on disk (trainables/bundle.py): the best epoch's weights by default, the last on request."""

import torch

from trainables.bundle import bundle_args, load_bundle, save_bundle
from trainables.loop import fit


def _saved(noisy, path):
    data, config = noisy.data, noisy.config
    result = fit(config, data)
    last_epoch = result.history[-1]["epoch"]
    assert result.best_epoch < last_epoch, "the situation this test needs: the best epoch is not the last"
    meta = {"classes": list(data.classes), "mean": list(data.mean), "std": list(data.std)}
    save_bundle(
        path,
        **bundle_args(
            config.to_dict(), meta, result.model.state_dict(), last_epoch, result.best_model, result.best_epoch
        ),
    )
    return result, last_epoch


def _same(state: dict, expected: dict) -> bool:
    return state.keys() == expected.keys() and all(torch.equal(state[k], v) for k, v in expected.items())


def test_a_bundle_loads_the_best_epoch_s_weights_by_default(noisy, tmp_path):
    result, _ = _saved(noisy, tmp_path / "m.pt")
    loaded = load_bundle(tmp_path / "m.pt")
    assert loaded.epoch == result.best_epoch and _same(loaded.model.state_dict(), result.best_model)
    assert not loaded.model.training, "loaded for inference: eval mode"


def test_a_bundle_loads_the_last_epoch_s_weights_on_request(noisy, tmp_path):
    result, last_epoch = _saved(noisy, tmp_path / "m.pt")
    last = load_bundle(tmp_path / "m.pt", weights="last")
    assert last.epoch == last_epoch and _same(last.model.state_dict(), result.model.state_dict())
    assert not _same(last.model.state_dict(), result.best_model)


def test_a_run_whose_best_epoch_is_its_last_keeps_one_set_of_weights(noisy):
    state = {"w": torch.ones(1)}
    args = bundle_args({}, {}, state, 8, {"w": torch.zeros(1)}, 8)
    assert args["state_dict"] is state and args["epoch"] == 8 and "last_state" not in args
