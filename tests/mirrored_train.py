"""Run ``stages/train.py`` as ``python stages/train.py`` would, with the CPU split into two logical devices.

TensorFlow then sees two CPU devices and no GPU, so the train stage picks a real MirroredStrategy
(see ``imgclf.train.training.distribution_strategy``): tests/test_gpu_path.py runs the multi-device path,
resume after a kill included, on a machine without GPUs. Run it from the repository root.
"""

import runpy
import sys
from pathlib import Path

import tensorflow as tf

tf.config.set_visible_devices([], "GPU")  # on a GPU machine too: the test is about the CPU split
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)
script = Path("stages/train.py")
sys.argv = [str(script), *sys.argv[1:]]
sys.path[0] = str(script.resolve().parent)  # as if started as `python stages/train.py`
runpy.run_path(str(script), run_name="__main__")
