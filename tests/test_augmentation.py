import albumentations as A
import numpy as np
import pytest

from imgclf.data import augmentation
from imgclf.data.augmentation import build_policy, materialize, save_policy
from imgclf.io import PipelineError
from tests.conftest import shipped

POLICY = shipped(
    "augment",
    policy={
        "horizontal_flip": {"p": 0.5},
        "vertical_flip": {"p": 0.0},
        "affine": {"p": 0.7, "shift": 0.1, "scale": [0.9, 1.1], "rotate": 15},
        "random_resized_crop": {"p": 0.2, "scale": [0.8, 1.0]},
        "brightness_contrast": {"p": 0.3},
        "gauss_noise": {"p": 0.2},
        "blur": {"p": 0.1},
        "coarse_dropout": {"p": 0.3},
    },
)["policy"]


@pytest.fixture
def images(digits):
    import cv2

    small = digits[0][:300]
    return np.stack([cv2.resize(i, (28, 28))[:, :, None] for i in small])


def test_policy_holds_enabled_transforms_and_roundtrips_through_albumentations(tmp_path):
    policy = build_policy(POLICY, (28, 28))
    assert len(policy.transforms) == 7  # vertical_flip has p=0
    save_policy(policy, tmp_path / "augment.yaml")
    reloaded = A.load(str(tmp_path / "augment.yaml"), data_format="yaml")
    assert A.to_dict(reloaded) == A.to_dict(policy)


def test_unknown_transform_is_a_one_line_params_error(tmp_path):
    import yaml

    from imgclf.params import load_section
    from imgclf.paths import REPO_ROOT

    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["augment"]["policy"]["mixup"] = {"p": 1}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(PipelineError, match=r"augment\.policy\.mixup is not a key of augment\.policy; the keys"):
        load_section("augment", tmp_path / "params.yaml")


def test_materialize_is_identical_for_any_worker_count_and_seed_dependent(images, monkeypatch):
    monkeypatch.setattr(augmentation, "CHUNK_SIZE", 64)  # several chunks per copy
    policy = build_policy(POLICY, (28, 28))
    one = materialize(policy, images, copies=2, seed=3, workers=1)
    two = materialize(policy, images, copies=2, seed=3, workers=2)
    assert one.shape == (600, 28, 28, 1) and one.dtype == np.uint8
    assert one.tobytes() == two.tobytes()
    other = materialize(policy, images, copies=2, seed=4, workers=1)
    assert one.tobytes() != other.tobytes()
    assert not np.array_equal(one[:300], one[300:])  # the copies differ from each other
    assert not np.array_equal(one[:300], images)  # and from the originals


def test_zero_copies_gives_an_empty_array(images):
    out = materialize(build_policy(POLICY, (28, 28)), images, copies=0, seed=1)
    assert out.shape == (0, 28, 28, 1)
