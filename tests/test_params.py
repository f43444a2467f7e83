"""params.yaml against its schema: every value there, every key read, typos and bad values in one line."""

import re
import typing

import pytest
import yaml

from imgclf.io import PipelineError
from imgclf.params import COMMAND_SECTIONS, SCHEMA, STAGE_SECTIONS, Section, leaf_keys, load_section, reference_markdown
from imgclf.paths import REPO_ROOT
from tests.conftest import run

SHIPPED = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
CODE = {
    path: path.read_text()
    for folder in ("imgclf", "stages")
    for path in sorted((REPO_ROOT / folder).rglob("*.py"))  # the sub-packages too
    if path.name != "params.py"
}


def _leaves(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in tree.items():
        if isinstance(value, dict) and f"{prefix}{key}" not in leaf_keys():
            keys |= _leaves(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


def test_the_shipped_file_passes_and_holds_exactly_the_schema():
    for section in SCHEMA:
        load_section(section, REPO_ROOT / "params.yaml")
    assert _leaves(SHIPPED) == set(leaf_keys())
    assert set(SHIPPED) == set(SCHEMA)


def test_every_key_is_read_by_the_code_of_its_stage():
    """A key nobody reads is a setting that silently does nothing. Each key's name must appear, quoted,
    in the code of the stage that owns its section (its script and the modules dvc.yaml lists)."""
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    unread = []
    for stage, spec in stages.items():
        section = STAGE_SECTIONS.get(stage, stage)
        code = "\n".join((REPO_ROOT / dep).read_text() for dep in spec["deps"] if dep.endswith(".py"))
        code = code.replace((REPO_ROOT / "imgclf" / "params.py").read_text(), "")  # the schema itself
        unread += [
            key for key in leaf_keys() if key.startswith(f"{section}.") and f'"{key.split(".")[-1]}"' not in code
        ]
    assert unread == []


def _models_within(annotation) -> list:
    """Schema models inside an annotation such as ``dict[str, SearchRange | SearchChoices]``."""
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _models_within(arg)]


def test_every_key_the_code_reads_is_in_the_schema():
    names = {part for key in leaf_keys() for part in key.split(".")}
    for section in SCHEMA.values():  # and the keys of models held in a dict (tune.space's entries)
        for field in section.model_fields.values():
            names |= {name for model in _models_within(field.annotation) for name in model.model_fields}
    read = {
        (path.name, name)
        for path, text in CODE.items()
        for name in re.findall(r'(?:params|spec|settings|transfer|section)\["(\w+)"\]', text)
    }
    assert read, "the pattern finds nothing: the test would pass vacuously"
    assert sorted((file, name) for file, name in read if name not in names) == []


def test_every_stage_has_a_section():
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    assert {STAGE_SECTIONS.get(name, name) for name in stages} == set(SCHEMA) - set(COMMAND_SECTIONS)


def _with(tmp_path, change) -> str:
    params = yaml.safe_load(yaml.safe_dump(SHIPPED))
    change(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.mark.parametrize(
    "section,change,expected",
    [
        (
            "train",
            lambda p: p["train"].update(epoch=20),
            "train.epoch is not a key of train; did you mean train.epochs?",
        ),
        (
            "train",
            lambda p: p["train"].update(learning_rat=0.01),
            "train.learning_rat is not a key of train; did you mean train.learning_rate?",
        ),
        (
            "train",
            lambda p: p["train"]["auto"].update(min_epoch=3),
            "train.auto.min_epoch is not a key of train.auto; did you mean train.auto.min_epochs?",
        ),
        (
            "train",
            lambda p: p["train"].update(epochs="ten"),
            "train.epochs = 'ten' is not allowed: should be 'auto' or",
        ),
        ("train", lambda p: p["train"].update(batch_size=0), "train.batch_size = 0 is not allowed"),
        ("train", lambda p: p["train"].pop("seed"), "train.seed is missing (weights and shuffling seed)"),
        (
            "preprocess",
            lambda p: p["preprocess"].update(color_mode="RGB"),
            "preprocess.color_mode = 'RGB' is not allowed: should be 'grayscale' or 'rgb'",
        ),
        ("export", lambda p: p["export"].update(variants=["int9"]), "export.variants.0 = 'int9' is not allowed"),
        ("ingest", lambda p: p["ingest"].update(limit="all"), "ingest.limit = 'all' is not allowed"),
        ("ingest", lambda p: p.update(trian={}), "unknown section 'trian'; did you mean train?"),
        ("validate", lambda p: p["validate"]["rules"].update(min_edge="fatal"), "validate.rules.min_edge = 'fatal'"),
    ],
)
def test_typos_and_bad_values_are_one_line_errors(tmp_path, section, change, expected):
    path = _with(tmp_path, change)
    with pytest.raises(PipelineError) as error:
        load_section(section, path)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and expected in message
    assert "\n" not in message


def test_yaml_is_read_as_dvc_writes_it(tmp_path):
    """DVC (ruamel, YAML 1.2) writes `-S train.mixed_precision=off` unquoted; off/on are strings there."""
    text = (REPO_ROOT / "params.yaml").read_text()
    text = text.replace("mixed_precision: auto", "mixed_precision: off").replace(
        "learning_rate: auto ", "learning_rate: 3e-4 "
    )
    assert "mixed_precision: off" in text and "learning_rate: 3e-4" in text
    (tmp_path / "params.yaml").write_text(text)
    train = load_section("train", tmp_path / "params.yaml")
    assert train["mixed_precision"] == "off" and train["learning_rate"] == pytest.approx(3e-4)


def test_the_docs_params_reference_is_generated_from_the_schema():
    reference = (REPO_ROOT / "docs" / "params.md").read_text()
    assert reference_markdown() in reference, "regenerate docs/params.md's table: python -m imgclf.params"


@pytest.mark.slow
def test_a_typo_through_dvc_exp_run_and_a_bad_value_fail_before_touching_outputs(repo_copy, fashion_mnist_dir):
    """The stage checks its params before reading or writing anything. (DVC itself removes a stage's
    outputs before it runs the command; what the stage would have written is never half-written.)"""
    import sys

    from imgclf.paths import layout
    from tests.conftest import set_params

    set_params(repo_copy, ingest={"limit": 40}, validate={"min_per_class": 20})
    run(["dvc", "repro", "validate"], repo_copy)
    run(["git", "add", "-A"], repo_copy)
    run(["git", "commit", "-qm", "data stages"], repo_copy)
    paths = layout(repo_copy)
    outputs = (paths.validation_report, paths.quarantine, paths.validated_manifest, paths.ingested_manifest)
    before = {path: path.read_bytes() for path in outputs}

    refused = run(["dvc", "exp", "run", "-S", "validate.min_egde=10", "validate"], repo_copy, check=False)
    assert refused.returncode != 0 and "min_egde" in refused.stderr  # DVC refuses to add a key...
    typo = run(["dvc", "exp", "run", "-S", "+validate.min_egde=10", "validate"], repo_copy, check=False)
    assert typo.returncode != 0  # ... unless told to (+key); then the stage refuses it, in one line
    line = "validate: error: params.yaml: validate.min_egde is not a key of validate; did you mean validate.min_edge?"
    assert line in typo.stderr and "Traceback" not in typo.stderr
    assert paths.ingested_manifest.read_bytes() == before[paths.ingested_manifest]  # upstream: not rerun

    for path in outputs:  # DVC removed validate's outputs before its command: put them back, and
        path.parent.mkdir(parents=True, exist_ok=True)  # run the script alone (params.yaml still holds
        path.write_bytes(before[path])  # the typo): it must not change a byte
    direct = run([sys.executable, "stages/validate.py"], repo_copy, check=False)  # the same, without DVC
    assert direct.returncode == 1 and direct.stderr.strip().endswith(line.split("validate: error: ")[1])
    assert {path: path.read_bytes() for path in outputs} == before
    run(["git", "checkout", "params.yaml"], repo_copy)
    run(["dvc", "checkout", "-f"], repo_copy, check=False)
    run(["dvc", "repro", "validate"], repo_copy)
    before = {path: path.read_bytes() for path in outputs}
    set_params(repo_copy, ingest={"limit": -5})
    for cmd in ([sys.executable, "stages/ingest.py"], ["dvc", "repro", "validate"]):
        bad = run(cmd, repo_copy, check=False)
        assert bad.returncode != 0 and "Traceback" not in bad.stderr
        message = "ingest: error: params.yaml: ingest.limit = -5 is not allowed: should be greater than or equal to 1"
        assert message in bad.stderr
        assert all(path.read_bytes() == before[path] for path in outputs if path.exists())
    assert paths.validation_report.exists()  # ingest failed first: validate's outputs were never removed


def test_the_accurate_profile_sets_valid_train_params_and_the_docs_show_it(tmp_path):
    """`make accurate` (the Makefile's ACCURATE overrides) names train params that exist, with values
    the schema accepts, and the docs' command for it (docs/pipeline.md) sets the same ones."""
    from imgclf.train.tune import with_values

    makefile = (REPO_ROOT / "Makefile").read_text().replace("\\\n", " ")
    overrides = re.findall(r"-S (\S+)", re.search(r"^ACCURATE := (.*)$", makefile, re.M).group(1))
    assert len(overrides) >= 2
    values = dict(yaml.safe_load(item.replace("=", ": ", 1)).popitem() for item in overrides)
    assert all(key.startswith("train.") for key in values)
    train = with_values(SHIPPED["train"], values)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**SHIPPED, "train": train}))
    checked = load_section("train", tmp_path / "params.yaml")
    assert checked["model"] != SHIPPED["train"]["model"] or checked["epochs"] != SHIPPED["train"]["epochs"]
    page = (REPO_ROOT / "docs" / "pipeline.md").read_text().replace("\\\n", " ")
    shown = re.search(r"^dvc exp run -n accurate (.*)$", page, re.M)
    assert shown, "docs/pipeline.md: show the accurate profile's dvc exp run command"
    assert sorted(re.findall(r"-S (\S+)", shown.group(1))) == sorted(overrides)
