"""The hyperparameter search (python -m imgclf.tune): its search space rules, and a real three-trial
study on a tiny Fashion-MNIST subset that lands in MLflow as one parent run with a child per trial."""

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from imgclf.io import PipelineError, read_json
from imgclf.paths import layout
from imgclf.train import tune
from tests.conftest import run, set_params, shipped


def test_a_trials_values_are_set_in_a_copy_of_the_train_section_and_a_list_item_by_index():
    train = shipped("train")
    values = {"train.learning_rate": 0.002, "train.simple_cnn.dropout.1": 0.3, "train.simple_cnn.dense": 512}
    applied = tune.with_values(train, values)
    assert applied["learning_rate"] == 0.002 and applied["simple_cnn"]["dense"] == 512
    assert applied["simple_cnn"]["dropout"] == [train["simple_cnn"]["dropout"][0], 0.3]
    assert train["simple_cnn"]["dropout"] != applied["simple_cnn"]["dropout"]  # the original is untouched
    # a list item is applied as its whole list: `-S key.1=...` would not be a valid DVC override
    assert tune.overrides(applied, values) == [
        "train.learning_rate=0.002",
        f"train.simple_cnn.dropout=[{train['simple_cnn']['dropout'][0]},0.3]",
        "train.simple_cnn.dense=512",
    ]


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"train.learning_rat": {"low": 0.001, "high": 0.01, "log": True}}, "is not in params.yaml's train section"),
        ({"evaluate.top_k": {"choices": [1, 3]}}, "is not a train param"),
        ({"train.simple_cnn": {"choices": [1, 2]}}, "is a section or list"),
        ({"train.optimizer": {"choices": ["adam", "lion"]}}, "train.optimizer = 'lion'"),
        ({"train.label_smoothing": {"low": 0.0, "high": 1.5, "log": False}}, "train.label_smoothing = 1.5"),
        ({"train.learning_rate": {"low": 0.0, "high": 0.01, "log": True}}, "a log scale needs low > 0"),
        ({"train.learning_rate": {"low": 0.01, "high": 0.001, "log": False}}, "low must be below high"),
        ({}, "tune.space is empty"),
    ],
)
def test_a_bad_search_space_fails_before_any_training_with_one_line(space, message):
    with pytest.raises(PipelineError, match=message.replace("[", r"\[").replace("(", r"\(")):
        tune.check_space(shipped("train"), space)


def test_learning_rate_auto_is_outside_the_space_so_the_first_trial_is_drawn(caplog):
    """The shipped train.learning_rate is auto (a range test), which no search range contains."""

    class Study:
        def __init__(self):
            self.enqueued = []

        def enqueue_trial(self, values):
            self.enqueued.append(values)

    space, study = shipped("tune")["space"], Study()
    with caplog.at_level("INFO", logger="imgclf.train.tune"):
        tune.enqueue_current(study, shipped("train"), space)
    assert study.enqueued == [] and "train.learning_rate outside tune.space" in caplog.text
    tune.enqueue_current(study, shipped("train", learning_rate=0.0087), space)
    assert study.enqueued[0]["train.learning_rate"] == 0.0087


def test_the_subset_is_stratified_seeded_and_in_the_arrays_order():
    y = np.repeat(np.arange(4), [100, 50, 30, 20])
    x = np.arange(len(y))
    xs, ys = tune.subset(x, y, 40, seed=1)
    assert list(np.bincount(ys)) == [20, 10, 6, 4]
    assert list(xs) == sorted(xs) and np.array_equal(y[xs], ys)
    assert np.array_equal(tune.subset(x, y, 40, seed=1)[0], xs)
    assert not np.array_equal(tune.subset(x, y, 40, seed=2)[0], xs)
    assert len(tune.subset(x, y, None, seed=1)[0]) == len(y)


@pytest.mark.slow
def test_a_three_trial_search_gives_a_parent_run_three_child_runs_and_the_best_params(repo_copy, fashion_mnist_dir):
    root = repo_copy
    set_params(
        root,
        ingest={"limit": 20},
        validate={"min_per_class": 10},
        tune={"trials": 3, "epochs": 2, "max_train_images": 200, "max_val_images": 100},
        train={"learning_rate": 0.0087},  # a number inside tune.space: trial 0 is then params.yaml as it is
    )
    run(["dvc", "repro", "augment"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "data"], root)
    result = run(["python", "-m", "imgclf.tune"], root)
    paths = layout(root)

    best = read_json(paths.tune_best)
    table = pd.read_csv(paths.tune_trials)
    assert len(table) == 3 and set(table["state"]) <= {"COMPLETE", "PRUNED"}
    assert best["trials"]["complete"] + best["trials"]["pruned"] == 3
    assert set(best["params"]) == set(shipped("tune")["space"])
    first = table.loc[0, [f"params_{key}" for key in best["params"]]]  # trial 0: params.yaml as it is
    current = shipped("train", learning_rate=0.0087)
    assert list(first) == pytest.approx([tune._get(current, key) for key in best["params"]])
    complete = table[table["state"] == "COMPLETE"]  # a pruned trial's value is its last epoch's
    assert best["best_value"] == pytest.approx(complete["value"].max())  # ties: any trial with the best value
    assert table.loc[table["number"] == best["best_trial"], "value"].item() == pytest.approx(best["best_value"])
    assert best["command"].startswith("dvc exp run -S ") and best["command"] in result.stdout
    assert (paths.tune_reports / "optimization_history.png").stat().st_size > 10_000
    assert (paths.tune_reports / "param_importances.png").stat().st_size > 10_000

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("imgclf")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children)
    assert all(r.info.status == "FINISHED" for r in runs)  # a pruned trial is not a failed run
    assert sorted(r.info.run_name for r in children) == [f"imgclf trial {n}" for n in range(3)]
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(best["best_value"])
    assert parent.data.tags["best_command"] == best["command"]
    child = next(r for r in children if r.data.tags["tune_trial"] == str(best["best_trial"]))
    assert len(client.get_metric_history(child.info.run_id, "val_accuracy")) == 2  # per epoch, for the UI
    assert float(child.data.params["train.learning_rate"]) == pytest.approx(best["params"]["train.learning_rate"])

    # The study is kept: a larger budget adds trials to it, under the same parent run; --queue queues the best
    run(["python", "-m", "imgclf.tune", "--trials", "4", "--queue"], root)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 5 and sum("mlflow.parentRunId" in r.data.tags for r in runs) == 4
    assert len(pd.read_csv(paths.tune_trials)) == 4
    queued = run(["dvc", "queue", "status"], root).stdout
    assert "Queued" in queued, queued
    run(["dvc", "queue", "remove", "--all"], root)
