"""The trunk is torchvision's ResNet written out: the same parameters, its initialisation, the same outputs,
and importing the model does not import torchvision (its import pulls in torch._dynamo: seconds per command)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from instdisc.model import ResNetTrunk

torchvision = pytest.importorskip("torchvision")


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
def test_trunk_equals_torchvision_resnet(arch: str) -> None:
    theirs = getattr(torchvision.models, arch)()
    theirs.fc = torch.nn.Identity()
    ours = ResNetTrunk(arch, width=64, cifar_stem=False)
    a, b = ours.state_dict(), theirs.state_dict()
    assert [(k, v.shape) for k, v in a.items()] == [(k, v.shape) for k, v in b.items()]  # names, order, shapes
    ours.load_state_dict(b)  # torchvision weights load as they are ...
    x = torch.randn(2, 3, 64, 64)
    for mode in (True, False):  # ... and give the same outputs, with batch and with running statistics
        ours.train(mode)
        theirs.train(mode)
        assert torch.equal(ours(x), theirs(x))
    assert ours.out_dim == (2048 if arch == "resnet50" else 512)
    # the initialisation torchvision applies: He-normal convolutions (fan out), BatchNorm at 1 and 0
    torch.manual_seed(0)
    fresh = ResNetTrunk(arch, width=64)
    std = (2 / (64 * 7 * 7)) ** 0.5
    assert fresh.conv1.weight.std().item() == pytest.approx(std, rel=0.05)
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any()
               for m in fresh.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_narrow_trunk_with_the_cifar_stem_keeps_the_feature_map() -> None:
    t = ResNetTrunk("resnet18", width=16, cifar_stem=True).eval()
    assert t.conv1.stride == (1, 1) and isinstance(t.maxpool, torch.nn.Identity)
    assert t(torch.randn(1, 3, 32, 32)).shape == (1, 128)
    with pytest.raises(ValueError, match="unknown arch 'vgg'"):
        ResNetTrunk("vgg")


def test_the_training_command_starts_without_torchvision_or_matplotlib() -> None:
    """Both cost seconds of CPU at every start; matplotlib comes in when the curves are drawn."""
    code = ("import sys, instdisc.model, instdisc.commands.train; "
            "print('torchvision' in sys.modules, 'matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
