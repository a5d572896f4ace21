"""Importing teachers trained elsewhere (models/imported.py): every architecture the reference frameworks
have, saved in their layout with random weights and random BatchNorm statistics, loads into a kdlens
network that gives the same logits and features; a file that does not fit stops in one line."""
import pytest
import torch

import models
from core import checkpoint
from models import registry
from reference_layouts import ARCHS, randomised, save_reference

NUM_CLASSES = 100


def close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()), msg=lambda m: f"{what}: {m}")


def test_every_reference_arch_has_a_reference_network_here():
    assert set(ARCHS) == {a for a in models.names() if registry.reference_keys(a) is not None}


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_reference_checkpoint_gives_the_original_outputs(arch, tmp_path):
    ref = randomised(ARCHS[arch](NUM_CLASSES), seed=len(arch))
    save_reference(ref, tmp_path / "ckpt_epoch_240.pth")
    net, layout = models.import_checkpoint(arch, tmp_path / "ckpt_epoch_240.pth", NUM_CLASSES)
    assert layout == models.imported.REFERENCE
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want_logits, want = ref.eval()(x)
        logits, feats = net(x)
    close(logits, want_logits, "logits")
    close(feats.stem, want["stem"], "stem")
    assert len(feats.stages) == len(want["stages"])
    for i, (got, exp) in enumerate(zip(feats.stages, want["stages"])):
        close(got, exp, f"stage {i}")
    close(feats.pooled, want["pooled"], "pooled")


def test_bare_state_dicts_dataparallel_prefixes_and_kdlens_files_load(tmp_path):
    ref = randomised(ARCHS["resnet8"](10), seed=0)
    torch.save({f"module.{k}": v for k, v in ref.state_dict().items()}, tmp_path / "bare.pth")
    net, layout = models.import_checkpoint("resnet8", tmp_path / "bare.pth", 10)
    assert layout == models.imported.REFERENCE
    # Its state dict, saved bare in kdlens's names, and as a kdlens model.pt, give the same network.
    torch.save(net.state_dict(), tmp_path / "kdlens_keys.pt")
    checkpoint.save(tmp_path / "model.pt", {"model": net.state_dict(), "meta": {"arch": "resnet8", "num_classes": 10}})
    x = torch.randn(2, 3, 32, 32)
    for name, expected in (("kdlens_keys.pt", models.imported.KDLENS_KEYS), ("model.pt", models.imported.KDLENS)):
        again, layout = models.import_checkpoint("resnet8", tmp_path / name, 10)
        assert layout == expected
        torch.testing.assert_close(again(x)[0], net(x)[0])


def test_a_file_of_another_arch_names_the_key_and_the_arch_it_fits(tmp_path):
    save_reference(randomised(ARCHS["resnet20"](NUM_CLASSES), seed=0), tmp_path / "t.pth")
    with pytest.raises(models.CheckpointMismatch) as e:
        models.load_checkpoint("resnet32", tmp_path / "t.pth", NUM_CLASSES)
    msg = str(e.value)
    assert "\n" not in msg and "does not fit resnet32 with 100 classes: missing key 'stages.0.3." in msg, msg
    assert msg.endswith("its keys fit resnet20: set the arch to resnet20"), msg
    with pytest.raises(models.CheckpointMismatch, match=r"'classifier.weight' has shape \[100, 64\] in the file, "
                                                       r"\[10, 64\] in the model; check the arch and the class count"):
        models.load_checkpoint("resnet20", tmp_path / "t.pth", 10)
    torch.save({"model": {"epoch": 3}}, tmp_path / "empty.pth")
    with pytest.raises(models.CheckpointMismatch, match="holds no state dict"):
        models.load_checkpoint("resnet20", tmp_path / "empty.pth", 10)
    (tmp_path / "cut.pth").write_bytes((tmp_path / "t.pth").read_bytes()[:1000])
    with pytest.raises(checkpoint.UnreadableCheckpoint, match="cut.pth: corrupt"):
        models.load_checkpoint("resnet20", tmp_path / "cut.pth", 10)
