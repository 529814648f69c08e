"""The degradation experiment: one recipe for every network, its CSV, JSON, figure and run folders."""
import csv
import json
import os

import pytest

from minires import cli, experiments


def test_degradation_trains_every_pair_with_one_recipe(tmp_path):
    lines = []
    results, folder = experiments.degradation(depths=(8,), epochs=1, batch_size=128, lr=0.05, warmup_epochs=1,
                                              out=str(tmp_path), progress=False, log=lines.append)
    assert sorted(results) == ["plain8", "resnet8"]
    assert sorted(os.listdir(folder)) == ["degradation.csv", "degradation.json", "degradation.png",
                                          "plain8", "resnet8"]
    configs = {name: json.load(open(os.path.join(folder, name, "config.json"))) for name in results}
    assert configs["plain8"].pop("model") == "plain8" and configs["resnet8"].pop("model") == "resnet8"
    assert configs["plain8"] == configs["resnet8"], "plain and residual runs must share the recipe"
    assert configs["plain8"]["lr"] == 0.05 and configs["plain8"]["warmup_epochs"] == 1
    with open(os.path.join(folder, "degradation.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], r["kind"], r["depth"], r["epoch"]) for r in rows] == [
        ("plain8", "plain", "8", "1"), ("resnet8", "resnet", "8", "1")]
    for row in rows:
        history = results[row["model"]][0]
        assert float(row["train_error"]) == pytest.approx(1 - history["train_acc"])
        assert float(row["test_error"]) == pytest.approx(1 - history["test_acc"])
    assert json.load(open(os.path.join(folder, "degradation.json"))) == [
        {k: (float(v) if k.endswith(("error", "loss")) else int(v) if k in ("depth", "epoch") else v)
         for k, v in r.items()} for r in rows]
    assert any(line.startswith("plain8: final training error") for line in lines)


def test_cli_passes_the_recipe_through(monkeypatch):
    seen = {}
    monkeypatch.setattr(experiments, "degradation", lambda **kwargs: seen.update(kwargs))
    assert cli.main(["experiment", "degradation", "--depths", "20,56", "--epochs", "3", "--lr", "0.05",
                     "--warmup-epochs", "1", "--quiet"]) == 0
    assert seen["depths"] == (20, 56) and seen["epochs"] == 3 and seen["lr"] == 0.05
    assert seen["warmup_epochs"] == 1 and seen["progress"] is False


def test_cli_rejects_a_depth_without_a_plain_twin(capsys):
    assert cli.main(["experiment", "degradation", "--depths", "9"]) == 2
    err = capsys.readouterr().err
    assert "no plain9 model" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("flag, expected", [([], True), (["--nesterov"], True), (["--no-nesterov"], False)])
def test_train_nesterov_flag(monkeypatch, flag, expected):
    import minires.train
    seen = {}

    def fake_train(config=None, progress=True, **overrides):
        seen["config"] = config
        raise KeyboardInterrupt  # stop before any training

    monkeypatch.setattr(minires.train, "train", fake_train)
    assert cli.main(["train", "--quiet", *flag]) == 130
    assert seen["config"].nesterov is expected


@pytest.mark.parametrize("kwargs, culprit", [(dict(epochs=0), "--epochs"), (dict(lr=float("nan")), "--lr"),
                                             (dict(depths=(8, 9)), "plain9"), (dict(depths=()), "depths"),
                                             (dict(warmup_epochs=-1), "--warmup-epochs")])
def test_degradation_checks_every_option_before_it_makes_a_folder(tmp_path, kwargs, culprit):
    from minires.train import ConfigError
    with pytest.raises(ConfigError, match=culprit):
        experiments.degradation(**dict(dict(depths=(8,), epochs=1, out=str(tmp_path), progress=False), **kwargs))
    assert os.listdir(tmp_path) == []
