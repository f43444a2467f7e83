"""dvc.yaml and the path helpers must name the same files; each stage depends on its own params only."""

import re

import yaml

from imgclf.params import STAGE_SECTIONS as SECTIONS  # stage name -> its params section
from imgclf.paths import REPO_ROOT, layout

DVC = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
PARAMS = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())


# The one key a stage reads from another's section, and why: the headline of export-tflite
# (reports/shipped.json) is the variant the service ships.
BORROWED = {"export-tflite": {"serve.variant"}, "promote": {"serve.variant"}}  # the shipped variant


def _names(entries):
    return {next(iter(e)) if isinstance(e, dict) else e for e in entries or []}


def _rel(path):
    return str(path.relative_to(layout(REPO_ROOT).root))


def test_every_stage_has_its_script_and_own_params_section():
    for name, stage in DVC.items():
        script = f"stages/{name.replace('-', '_')}.py"
        # -m: the run's own copy of the package is imported, even from a queued experiment's temporary
        # copy while `pip install -e .` points at the workspace (the cwd comes first on sys.path)
        assert stage["cmd"] == f"python -m stages.{name.replace('-', '_')}"
        assert script in stage["deps"]
        assert all(
            (REPO_ROOT / dep).exists() or dep.startswith(("data/", "models/", "reports/")) for dep in stage["deps"]
        )
        section = SECTIONS.get(name, name)
        assert _names(stage.get("params")) == {section} | BORROWED.get(name, set())
        assert section in PARAMS


def test_outputs_match_the_layout():
    paths = layout(REPO_ROOT)
    declared = {
        name: _names(stage.get("outs")) | _names(stage.get("metrics")) | _names(stage.get("plots"))
        for name, stage in DVC.items()
    }
    assert declared["ingest"] == {_rel(paths.ingested)}
    assert declared["validate"] == {
        _rel(paths.validated),
        _rel(paths.validation_report),
        _rel(paths.validation_summary),
        _rel(paths.validation_warnings),
        _rel(paths.quarantine),
    }
    assert declared["preprocess"] == {_rel(paths.preprocessed)}
    assert declared["augment"] == {
        _rel(paths.augmented),
        _rel(paths.augment_policy),
        _rel(paths.augment_preview),
    }
    assert declared["predict"] == {_rel(paths.predict_output)}
    assert declared["audit"] == {
        _rel(paths.label_issues),
        _rel(paths.image_issues),
        _rel(paths.audit_summary),
        _rel(paths.audit_detail),
        _rel(paths.audit_report),
    }
    assert {_rel(paths.quarantine), _rel(paths.tflite), _rel(paths.ingested_manifest)} <= set(DVC["predict"]["deps"])


def test_no_two_stages_own_overlapping_paths():
    owned = [
        (name, out)
        for name, stage in DVC.items()
        for out in _names(stage.get("outs")) | _names(stage.get("metrics")) | _names(stage.get("plots"))
    ]
    for i, (stage_a, a) in enumerate(owned):
        for stage_b, b in owned[i + 1 :]:
            overlap = a == b or a.startswith(b + "/") or b.startswith(a + "/")
            assert not overlap, f"{stage_a}:{a} overlaps {stage_b}:{b}"


def _imgclf_imports(path, seen=None):
    """The imgclf modules a file imports, directly or through other imgclf modules (top-level and lazy)."""
    import ast

    seen = set() if seen is None else seen
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("imgclf"):
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names if alias.name.startswith("imgclf")]
        for name in names:
            parts = name.split(".")
            # importing imgclf.data.ingest runs imgclf/__init__.py and imgclf/data/__init__.py first
            packages = [REPO_ROOT.joinpath(*parts[:i], "__init__.py") for i in range(1, len(parts) + 1)]
            for module in [*packages, REPO_ROOT / (name.replace(".", "/") + ".py")]:
                if module.exists() and _rel_str(module) not in seen:
                    seen.add(_rel_str(module))
                    _imgclf_imports(module, seen)
    return seen


def _rel_str(path):
    return str(path.relative_to(REPO_ROOT))


def test_every_stage_depends_on_every_module_it_imports():
    """Otherwise a change to a module could leave a stage's outputs stale while `dvc repro` says nothing changed."""
    for name, stage in DVC.items():
        script = REPO_ROOT / f"stages/{name.replace('-', '_')}.py"
        missing = _imgclf_imports(script) - set(stage["deps"])
        assert not missing, f"stage {name} imports {sorted(missing)} but does not list them in deps"


def test_stage_scripts_import_tensorflow_only_through_the_package():
    """imgclf/__init__.py quiets TensorFlow's C++ logs; that only works if it runs before TensorFlow loads."""
    for script in sorted((REPO_ROOT / "stages").glob("*.py")):
        imports = re.findall(r"^(?:import|from) (\w+)", script.read_text(), flags=re.MULTILINE)
        assert not {"tensorflow", "keras"} & set(imports), script.name


def test_tensorflow_starts_quietly_unless_asked():
    """No oneDNN notice, no "failed call to cuInit" on a machine without a GPU: the console stays readable."""
    import os
    import subprocess
    import sys

    code = "import imgclf.train.models, tensorflow as tf; print(int(tf.constant(1) + 1), tf.config.list_physical_devices('GPU'))"
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("TF_CPP_MIN_LOG_LEVEL", "IMGCLF_QUIET_TENSORFLOW")
    }
    quiet = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert quiet.returncode == 0 and quiet.stdout.startswith("2 ")
    assert not re.search(r"^[IWE]0000 |absl::InitializeLog", quiet.stderr, flags=re.MULTILINE), quiet.stderr
    # asked for (the user's own TF_CPP_MIN_LOG_LEVEL): nothing held back, TensorFlow says what it says
    loud = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env={**env, "TF_CPP_MIN_LOG_LEVEL": "0"},
        capture_output=True,
        text=True,
    )
    assert loud.returncode == 0 and loud.stderr.strip(), (
        "TensorFlow printed nothing at level 0: the check above proves nothing"
    )
