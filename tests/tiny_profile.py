"""The tiny profile every test that runs kdlens's stages uses: the project's params.yaml shrunk to seconds."""
import copy
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def tiny_params() -> dict:
    """The project's params.yaml shrunk to seconds: small scenes, small nets, two epochs."""
    p = copy.deepcopy(yaml.safe_load((ROOT / "params.yaml").read_text()))
    p["data"]["scenes"].update(n_train=192, n_test=96)
    for role in ("teacher", "student"):
        p[role]["arch"] = "resnet8"
        p[role]["train"].update(epochs=2, batch_size=32, eval_batch_size=96, keep_epochs=[])
    p["student"]["train"]["keep_epochs"] = [0, 2]
    p["student"]["structure"]["train"].update(epochs=2, batch_size=32, eval_batch_size=96, warmup_epochs=1,
                                              frozen_epochs={"routing": 1})  # ltb stage 1
    p["sigma"].update(n_images=4, steps=20, probe_step=15, noise_batch=4)  # the whole chain in seconds
    # Compiling the teacher costs a stage process seconds that a seconds-long training never earns back;
    # tests/test_teacher_cache.py covers it, test_pipeline.py the stages that declare the switch.
    p["trainer"]["compile_teacher"] = False
    return p
