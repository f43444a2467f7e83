"""Stage promote: the new registered model version -> alias "candidate", and "champion" if it beats the champion.

Runs after evaluate and export-tflite, and honours their verdicts: a model that evaluate found not
fit to ship (reports/eval/verdict.json: at chance, or below the baseline beyond noise) gets no alias
at all; one whose shipped variant (``serve.variant``) export did not bless (reports/shipped.json)
is a candidate, never champion. A champion tested on other images (the test folder changed) is
scored again with its shipped file on this test split, beside the candidate's shipped file. The
decision, with the paired comparison behind it, goes to reports/promotion.json and to the
training's MLflow run.
"""

import logging

import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from imgclf.data.shards import read_split
from imgclf.io import read_json, require, write_json
from imgclf.params import load_section
from imgclf.ship import registry
from imgclf.stage import run_stage
from imgclf.team import tracking

log = logging.getLogger(__name__)


def main(params, paths):
    tracking.check_store(paths.root)  # a tracking server that is down fails here, before any write
    registered = read_json(require(paths.run_info, "train"))["registered_model"]
    shipped = read_json(require(paths.shipped_metrics, "export-tflite"))
    if not registered:
        write_json(paths.promotion, {"registered_model": None, "promote": False, "reason": "not registered"})
        log.info("nothing to promote: train.registered_model_name is null")
        return [paths.promotion]
    predictions = pd.read_csv(require(paths.predictions, "evaluate"), dtype=str, keep_default_na=False)
    verdict = read_json(require(paths.eval_verdict, "evaluate"))
    if "shipped_accuracy" not in shipped:  # serve.variant is not among export.variants
        unblessed = "its shipped variant (serve.variant) was not exported: add it to export.variants"
    elif not shipped["shipped_blessed"]:
        unblessed = "its shipped variant (serve.variant) is not blessed: reports/export.json"
    else:
        unblessed = None
    if unblessed and params["allow_unfit"]:
        log.warning("promote.allow_unfit: %s; it may become champion all the same", unblessed)
        unblessed = None
    with tracking.training_run(paths):
        if not verdict["fit_to_ship"] and params["allow_unfit"]:
            log.warning("promote.allow_unfit: promoting a model NOT FIT TO SHIP (%s)", verdict["reason"])
        if not verdict["fit_to_ship"] and not params["allow_unfit"]:
            report = registry.refuse(MlflowClient(), registered["name"], str(registered["version"]), verdict["reason"])
            alias = "refused"
        else:
            report = registry.promote(
                MlflowClient(),
                registered["name"],
                str(registered["version"]),
                predictions,
                float(params["min_gain"]),
                float(params["significance"]),
                blocked=unblessed,
                test=test_images(paths),
            )
            alias = registry.CHAMPION if report["promote"] else registry.CANDIDATE
        mlflow.set_tags({"promotion": alias, "promotion_reason": report["reason"]})
        write_json(paths.promotion, report)
        mlflow.log_artifact(str(paths.promotion), "registry")
    say = log.error if alias == "refused" else log.info
    say("%s version %s is %s: %s", report["registered_model"], report["version"], alias, report["reason"])
    return [paths.promotion]


def test_images(paths) -> registry.TestImages | None:
    """This test split and the shipped file (serve.variant), read lazily: only a champion tested on
    other images needs them."""
    variant = load_section("serve")["variant"]
    shipped_file = paths.exported_model(variant)
    if not shipped_file.is_file():
        return None
    images, labels = read_split(paths, "test", lazy=True)
    class_names = read_json(require(paths.preprocessed_meta, "preprocess"))["class_names"]
    return registry.TestImages(images, np.asarray(class_names)[labels], class_names, shipped_file, variant)


if __name__ == "__main__":
    run_stage("promote", main)
