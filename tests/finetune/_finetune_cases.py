"""Cases shared by the finetune tests: the tutorial's fourteen models and their output layers."""

from __future__ import annotations

TUTORIAL = (
    "resnet18",
    "alexnet",
    "vgg16",
    "squeezenet1_0",
    "densenet161",
    "inception_v3",
    "googlenet",
    "shufflenet_v2_x1_0",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "resnext50_32x4d",
    "wide_resnet50_2",
    "mnasnet1_0",
)
NUM_CLASSES = 5

# the output layers, written out here (not read from strop) so the tests check strop's table
OUTPUT_LAYERS = {
    "resnet18": ("fc",),
    "alexnet": ("classifier.6",),
    "vgg16": ("classifier.6",),
    "squeezenet1_0": ("classifier.1",),
    "densenet161": ("classifier",),
    "inception_v3": ("fc", "AuxLogits.fc"),
    "googlenet": ("fc", "aux1.fc2", "aux2.fc2"),
    "shufflenet_v2_x1_0": ("fc",),
    "mobilenet_v2": ("classifier.1",),
    "mobilenet_v3_large": ("classifier.3",),
    "mobilenet_v3_small": ("classifier.3",),
    "resnext50_32x4d": ("fc",),
    "wide_resnet50_2": ("fc",),
    "mnasnet1_0": ("classifier.1",),
}
