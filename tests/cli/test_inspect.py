"""`strop inspect`: head, groups, parameter counts, frozen parts, input size."""

from __future__ import annotations

import torch

from strop.cli import main


def test_inspect_prints_what_finetuning_touches(capsys):
    assert main(["inspect", "resnet18", "--num-classes", "4", "--freeze", "backbone"]) == 0
    out = capsys.readouterr().out
    assert "head         fc: Linear(in_features=512, out_features=4, bias=True)" in out
    assert "input size   224x224" in out
    assert "11,178,564 total, 2,052 trainable" in out  # 11,176,512 backbone + 512*4+4 head
    assert "[backbone frozen]" in out
    assert "layer3" in out and "frozen (4 BatchNorm kept in eval)" in out


def test_inspect_inception_and_freeze_by_count(capsys):
    assert main(["inspect", "inception_v3", "--freeze", "2"]) == 0
    out = capsys.readouterr().out
    assert (
        "299x299" in out
        and "AuxLogits.fc" in out
        and "frozen       Conv2d_1a_3x3, Conv2d_2a_3x3\n" in out
    )


def test_inspect_with_a_weights_file(tmp_path, capsys):
    from strop.finetune import build_model

    path = tmp_path / "w.pth"
    torch.save(build_model("mobilenet_v3_small", num_classes=10).state_dict(), path)
    assert (
        main(["inspect", "mobilenet_v3_small", "--num-classes", "3", "--weights", str(path)]) == 0
    )
    out = capsys.readouterr().out
    assert (
        "head re-initialised for the new class count: classifier.3.weight, classifier.3.bias" in out
    )


def test_inspect_errors(capsys):
    assert main(["inspect", "resnt18"]) == 2
    assert "did you mean 'resnet18'" in capsys.readouterr().err
    assert main(["inspect", "resnet18", "--freeze", "layer9"]) == 2
    assert "did you mean 'layer4'" in capsys.readouterr().err
