"""``strop inspect MODEL``: what fine-tuning will touch, before training.

Prints the head, the layer groups, total and trainable parameter counts, what is frozen and the
expected input size. Without ``--weights`` the model is built on the ``meta`` device: shapes only,
no memory and no initialisation time, so even the largest models are inspected instantly.
"""

from __future__ import annotations

import argparse


def _freeze_arg(value: str) -> str | int:
    return int(value) if value.isdigit() else value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``strop inspect``."""
    parser.add_argument(
        "model", metavar="MODEL", help="torchvision model name, e.g. resnet18, inception_v3"
    )
    parser.add_argument(
        "--num-classes",
        type=int,
        default=None,
        metavar="N",
        help="classes of the new head (default: the model's own, 1000 or 21)",
    )
    parser.add_argument(
        "--freeze",
        type=_freeze_arg,
        default=None,
        metavar="WHAT",
        help="'backbone', a layer-group name (freeze up to it) or a number of groups",
    )
    parser.add_argument(
        "--weights",
        default=None,
        help="'DEFAULT', a torchvision weights name, or a .pth/.pt/.safetensors file",
    )
    parser.add_argument("--sha256", default=None, help="expected SHA-256 of the weights file")
    parser.add_argument(
        "--train-bn", action="store_true", help="keep BatchNorm of frozen groups trainable"
    )
    parser.add_argument(
        "--no-aux",
        dest="aux_logits",
        action="store_false",
        help="build inception_v3/googlenet/fcn/deeplabv3 without auxiliary heads",
    )


def run(args: argparse.Namespace) -> int:
    """Build the model as ``build_model`` would and print its summary."""
    from strop.finetune import build_model, freeze, model_spec, summarize
    from strop.finetune.build import load_report_of
    from strop.finetune.zoo import build_architecture

    num_classes = (
        args.num_classes if args.num_classes is not None else model_spec(args.model).num_classes
    )
    if args.weights is None:
        if args.sha256 is not None:
            raise ValueError("strop inspect: --sha256 needs --weights")
        model = build_architecture(
            args.model, num_classes=num_classes, aux_logits=args.aux_logits, device="meta"
        )
        freeze(model, args.freeze, train_bn=args.train_bn)
    else:
        model = build_model(
            args.model,
            num_classes=num_classes,
            weights=args.weights,
            freeze=args.freeze,
            train_bn=args.train_bn,
            sha256=args.sha256,
            aux_logits=args.aux_logits,
        )
    print(summarize(model))
    report = load_report_of(model)
    if report is not None:
        print(f"\nweights      {report}")
    return 0
