"""The training engine: augmentation purity, schedules, determinism, resume, checkpoints."""
import numpy as np
import pytest
import torch
from torch import nn

import methods
from core import checkpoint
from dataset.store import Split
from core.errors import KdlensError
from dataset.loader import Loader, crop_flip, epoch_plan
from training.params import TrainParams
from training.trainer import Precision, fit, lr_at, precision
from models.base import Classifier, Features


class TinyNet(Classifier):
    def __init__(self, num_classes=3):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.classifier = nn.Linear(8, num_classes)

    def extract(self, x):
        pre = self.bn(self.conv(x))
        f = torch.relu(pre)
        return Features(stem=f, stages=[f], preact=[pre], pooled=f.mean((2, 3)))


def _split(n=48, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    images = rng.integers(0, 60, (n, 3, 8, 8), dtype=np.uint8)
    images[:, labels % 3, 2:6, 2:6] += 150  # learnable: the label is the bright channel
    images[np.arange(n), labels, 2:6, 2:6] = 250
    return Split(images=images, labels=labels.astype(np.int64))


def _loaders(seed=0):
    train, test = _split(48, 0), _split(24, 1)
    mean, std = [0.3] * 3, [0.3] * 3
    dev = torch.device("cpu")
    return (Loader(train, mean, std, 16, dev, augment=True, shuffle=True, seed=seed),
            Loader(test, mean, std, 24, dev))


def _fit(tmp_path, epochs=3, on_epoch=None, keep=()):
    torch.manual_seed(0)
    model = TinyNet()
    ctx = methods.MethodContext(student=model, teacher=None, num_classes=3, num_train=48)
    method = methods.create("ce", methods.params_class("ce")(), ctx)
    cfg = TrainParams(epochs=epochs, batch_size=16, lr=0.1, keep_epochs=list(keep))
    train, test = _loaders()
    return model, fit(model, method, cfg, train, test, seed=0, work_dir=tmp_path, on_epoch=on_epoch)


def _comparable(history):
    return [{k: v for k, v in r.items() if k not in ("images_per_s", "epoch_seconds")} for r in history]


def test_augmentation_is_a_pure_function_of_seed_epoch_and_index():
    a, b = epoch_plan(100, 7, 3, True, True), epoch_plan(100, 7, 3, True, True)
    assert torch.equal(a.order, b.order) and torch.equal(a.offsets, b.offsets) and torch.equal(a.flips, b.flips)
    c = epoch_plan(100, 7, 4, True, True)
    assert not torch.equal(a.offsets, c.offsets)


def test_crop_flip_matches_a_per_sample_reference():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)
    offsets = torch.tensor([[0, 8], [4, 4]])
    flips = torch.tensor([False, True])
    out = crop_flip(x, offsets, flips)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    ref0 = padded[0, :, 0:5, 8:13]
    ref1 = padded[1, :, 4:9, 4:9].flip(-1)
    assert torch.equal(out[0], ref0) and torch.equal(out[1], ref1)


def test_precision_is_off_on_cpu_and_bf16_falls_back_to_fp16_with_a_scaler(monkeypatch):
    assert precision(TrainParams(amp=True, channels_last=True), torch.device("cpu")) == Precision()
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    bf16 = precision(TrainParams(), cuda)
    assert (bf16.dtype, bf16.channels_last, bf16.scaled) == (torch.bfloat16, True, False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # e.g. a V100
    fp16 = precision(TrainParams(), cuda)
    assert (fp16.dtype, fp16.scaled) == (torch.float16, True)
    assert precision(TrainParams(amp=False, channels_last=False), cuda) == Precision()


def test_lr_schedules():
    cos = TrainParams(epochs=10, lr=1.0, schedule="cosine", warmup_epochs=2)
    assert lr_at(cos, 1.0) == pytest.approx(0.5)  # half-way through the linear warm-up
    assert lr_at(cos, 2.0) == pytest.approx(1.0)
    assert lr_at(cos, 6.0) == pytest.approx(0.5)
    assert lr_at(cos, 10.0) == pytest.approx(0.0, abs=1e-12)
    steps = TrainParams(epochs=10, lr=1.0, schedule="multistep", milestones=[5, 8], gamma=0.1)
    assert [lr_at(steps, e) for e in (0, 4.9, 5, 8)] == pytest.approx([1.0, 1.0, 0.1, 0.01])


def test_training_learns_and_is_deterministic(tmp_path):
    _, a = _fit(tmp_path / "a")
    _, b = _fit(tmp_path / "b")
    assert _comparable(a.history) == _comparable(b.history)
    assert a.final["test/top1"] > 60.0  # three separable classes: well above chance (33%)
    assert set(a.final) >= {"lr", "train/ce", "train/loss", "gradnorm/ce", "test/top1", "test/top5", "images_per_s"}
    assert a.final["gradnorm/ce"] > 0


class Killed(Exception):
    """A training run stopped from outside (``kill_after_2``), as a killed stage is."""


def kill_after_2(record):
    """An ``on_epoch`` callback that stops the run once epoch 2 is checkpointed."""
    if record["epoch"] == 2:
        raise Killed


def test_killed_run_resumes_from_last_checkpoint_and_matches(tmp_path):
    _, full = _fit(tmp_path / "full", keep=(0, 2, 3))

    with pytest.raises(Killed):
        _fit(tmp_path / "run", on_epoch=kill_after_2, keep=(0, 2, 3))
    model, resumed = _fit(tmp_path / "run", keep=(0, 2, 3))
    assert resumed.resumed_from == 2
    assert _comparable(resumed.history) == _comparable(full.history)
    assert sorted(resumed.kept) == [0, 2, 3]
    saved = checkpoint.load(resumed.kept[3], required=("model", "epoch"))
    assert all(torch.equal(saved["model"][k], v) for k, v in model.state_dict().items())


def test_unreadable_resume_state_falls_back_to_the_previous_epoch_then_starts_over(tmp_path, capsys):
    _, full = _fit(tmp_path / "full")

    for broken, resumed_from in ((["last.pt"], 1), (["last.pt", "previous.pt"], 0)):
        run = tmp_path / f"run{resumed_from}"
        with pytest.raises(Killed):
            _fit(run, on_epoch=kill_after_2)
        for name in broken:
            (run / name).write_bytes(b"overwritten by hand")
        capsys.readouterr()
        _, resumed = _fit(run)
        err = capsys.readouterr().err
        assert resumed.resumed_from == resumed_from
        assert _comparable(resumed.history) == _comparable(full.history)  # the same training either way
        assert f"{run / 'last.pt'}: corrupt or not a kdlens checkpoint (Weights only load failed.); passing over it" in err
        assert "Traceback" not in err
        if resumed_from == 1:
            assert f"resuming from {run / 'previous.pt'} after epoch 1" in err
        else:
            assert "no readable resume state" in err and "training starts over" in err


def test_a_non_finite_loss_stops_with_one_line_and_its_hint(tmp_path):
    torch.manual_seed(0)
    model = TinyNet()
    with torch.no_grad():
        model.classifier.weight.fill_(float("nan"))  # as a diverged training leaves it
    ctx = methods.MethodContext(student=model, teacher=None, num_classes=3, num_train=48)
    method = methods.create("ce", methods.params_class("ce")(), ctx)
    train, test = _loaders()
    with pytest.raises(KdlensError, match=r"loss is nan at step 0; lower the learning rate or the method's weights"):
        fit(model, method, TrainParams(epochs=1, batch_size=16), train, test, seed=0, work_dir=tmp_path)


def test_corrupt_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "last.pt"
    checkpoint.save(path, {"a": torch.zeros(3)})
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(KdlensError, match=r"last\.pt: corrupt"):
        checkpoint.load(path)
    with pytest.raises(KdlensError, match="not found"):
        checkpoint.load(tmp_path / "nope.pt")


class Arbitrary:
    """Any class: unpickling it would run code, so weights_only loading must refuse it."""


def test_checkpoints_refuse_pickled_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "meta": {"x": Arbitrary()}}, path)
    with pytest.raises(KdlensError, match="evil.pt"):
        checkpoint.load(path)


class _ProbeWithPhase(methods.Method):
    """A method with a part trained only in its own phase (like FT's paraphraser)."""

    name = "_probe_phase"
    needs_teacher = False

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self.head = nn.Linear(8, 3)
        for p in self.head.parameters():
            p.requires_grad_(False)

    def _phase_losses(self, student, teacher, targets, index, epoch):
        return {"probe": nn.functional.cross_entropy(self.head(student[1].pooled.detach()), targets)}

    def phases(self):
        return [methods.Phase("probe", epochs=2, lr=0.1, parameters=list(self.head.parameters()),
                              losses=self._phase_losses, train_modules=[self.head])]

    def losses(self, student, teacher, targets, index, epoch):
        return {"ce": nn.functional.cross_entropy(student[0], targets)}


def test_extra_phase_trains_only_its_parts_and_is_frozen_afterwards(tmp_path):
    torch.manual_seed(0)
    model = TinyNet()
    method = _ProbeWithPhase(methods.MethodParams(), methods.MethodContext(model, None, 3, 48))
    head_before = method.head.weight.clone()
    student_before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainParams(epochs=1, batch_size=16, lr=1e-12, momentum=0.0, weight_decay=0.0)
    train, test = _loaders()
    result = fit(model, method, cfg, train, test, seed=0, work_dir=tmp_path)
    assert len(result.phases["probe"]) == 2
    assert "phase/probe/train/probe" in result.phases["probe"][0]
    assert not torch.equal(method.head.weight, head_before)  # trained in its phase
    assert not any(p.requires_grad for p in method.head.parameters())  # frozen again afterwards
    # ~zero lr in the main phase, and the phase does not touch the student's weights (BN stats aside)
    for k, v in model.state_dict().items():
        if "running" not in k and "num_batches" not in k:
            assert torch.allclose(v, student_before[k], atol=1e-9), k


def test_weight_distance_is_recorded_and_survives_resume(tmp_path):
    _, full = _fit(tmp_path / "full")
    wd = full.weight_distance
    assert wd["epochs"] == [0, 1, 2, 3]
    layer = wd["layers"]["conv.weight"]
    assert layer["cumulative"][0] == 0.0 and all(d > 0 for d in layer["per_iteration"][1:])
    assert wd["steps_per_epoch"] == [0, 3, 3, 3]

    def kill_after_2(record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path / "run", on_epoch=kill_after_2)
    _, resumed = _fit(tmp_path / "run")
    assert resumed.weight_distance["layers"]["conv.weight"]["cumulative"] == pytest.approx(layer["cumulative"])


def test_linear_schedule_ends_at_three_percent():
    lin = TrainParams(epochs=10, lr=1.0, schedule="linear", warmup_epochs=2)
    assert lr_at(lin, 1.0) == pytest.approx(0.5)
    assert lr_at(lin, 2.0) == pytest.approx(1.0)
    assert lr_at(lin, 6.0) == pytest.approx(1.0 - 0.5 / 1.03093)
    assert lr_at(lin, 10.0) == pytest.approx(1.0 - 1.0 / 1.03093)  # ~0.03


class GroupedNet(TinyNet):
    """TinyNet with the generic hooks a learned-structure model uses: named groups, per-epoch start,
    per-epoch diagnostics and a gate the groups can freeze."""

    def __init__(self):
        super().__init__()
        self.gate = nn.Parameter(torch.zeros(8))
        self.started: list[int] = []

    def extract(self, x):
        feats = super().extract(x)
        f = feats.stages[0] * torch.sigmoid(self.gate)[None, :, None, None]
        return Features(stem=f, stages=[f], preact=feats.preact, pooled=f.mean((2, 3)))

    def named_param_groups(self):
        return {"weights": [p for n, p in self.named_parameters() if n != "gate"], "gate": [self.gate]}

    def start_epoch(self, epoch):
        self.started.append(epoch)

    def epoch_diagnostics(self):
        return {"gate/mean": float(self.gate.detach().mean())}


def test_param_groups_get_their_lr_frozen_epochs_and_model_hooks(tmp_path):
    torch.manual_seed(0)
    model = GroupedNet()
    ctx = methods.MethodContext(student=model, teacher=None, num_classes=3, num_train=48)
    method = methods.create("ce", methods.params_class("ce")(), ctx)
    cfg = TrainParams(epochs=3, batch_size=16, lr=0.1, optimizer="adam", group_lr={"gate": 0.01},
                      frozen_epochs={"gate": 2})
    train, test = _loaders()
    seen = []
    result = fit(model, method, cfg, train, test, seed=0, work_dir=tmp_path,
                 on_epoch=lambda rec: seen.append((rec["epoch"], rec["gate/mean"])),
                 regularisers=lambda: {"gate_l2": (model.gate ** 2).sum()})
    assert model.started == [1, 2, 3]
    assert [e for e, _ in seen] == [1, 2, 3]
    assert seen[0][1] == 0.0 and seen[1][1] == 0.0  # frozen for two epochs (lr 0), then it moves
    assert seen[2][1] != 0.0
    assert abs(seen[2][1]) <= 0.01 * 3 + 1e-6  # Adam moves a weight by about lr per step: the group's lr
    assert "train/gate_l2" in result.history[0] and "gradnorm/gate_l2" in result.history[0]


def test_unknown_param_group_names_the_key(tmp_path):
    model = TinyNet()
    ctx = methods.MethodContext(student=model, teacher=None, num_classes=3, num_train=48)
    method = methods.create("ce", methods.params_class("ce")(), ctx)
    train, test = _loaders()
    with pytest.raises(KdlensError, match=r"train.group_lr: TinyNet has no parameter group 'routing'"):
        fit(model, method, TrainParams(epochs=1, group_lr={"routing": 0.1}), train, test, seed=0,
            work_dir=tmp_path)
