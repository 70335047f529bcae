import pytest

from strop.train.config import Config, apply_overrides, config_from_dict, load_config


def test_defaults_are_the_documented_ones():
    c = Config()
    assert (c.task, c.precision, c.epochs, c.seed, c.loss) == (
        "classification",
        "auto",
        10,
        0,
        "cross_entropy",
    )
    assert (c.monitor_metric, c.monitor_direction) == ("val_accuracy", "max")


def test_segmentation_defaults_to_dice_bce_and_dice_monitor():
    c = config_from_dict({"task": "segmentation"})
    assert c.loss == {"dice": 1.0, "bce": 1.0}
    assert c.monitor_metric == "val_dice"
    assert config_from_dict({"monitor": "val_loss"}).monitor_direction == "min"


def test_issue_example_config_loads(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        """
task: classification
data: {root: path/to/images, image_size: 64, batch_size: 32, val_fraction: 0.2}
model: {name: resnet18, weights: null, freeze: null}
loss: cross_entropy
optimizer: {name: sgd, lr: 0.01, momentum: 0.9, weight_decay: 0.0001}
schedule: {name: cosine, warmup_epochs: 1}
precision: auto
epochs: 10
seed: 0
output: runs/example
"""
    )
    c = load_config(path, ["optimizer.lr=0.1", "schedule.warmup_epochs=2", "model.freeze=backbone"])
    assert c.optimizer.lr == 0.1 and c.schedule == {"name": "cosine", "warmup_epochs": 2}
    assert c.model.freeze == "backbone" and c.data.root == "path/to/images"


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"optimzer": {}}, r"unknown key 'optimzer'; did you mean 'optimizer'\?"),
        ({"optimizer": {"lrr": 0.1}}, r"unknown key 'optimizer.lrr'; did you mean 'lr'\?"),
        (
            {"early_stopping": {"patince": 3}},
            r"unknown key 'early_stopping.patince'; did you mean 'patience'\?",
        ),
        ({"epochs": -1}, r"epochs: Input should be greater than 0; got -1"),
        ({"epochs": "ten"}, r"epochs: .*integer.*; got 'ten'"),
        ({"data": {"batch_size": 0}}, r"data.batch_size: Input should be greater than 0; got 0"),
        (
            {"precision": "bf17"},
            r"precision: Input should be 'auto', 'fp32', 'bf16' or 'fp16'; got 'bf17'",
        ),
        ({"data": {"val_fraction": 1.5}}, r"data.val_fraction: .*less than 1"),
    ],
)
def test_bad_configs_name_the_key(data, match):
    with pytest.raises(ValueError, match=match):
        config_from_dict(data)


def test_top_level_must_be_mapping(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="expected a mapping at the top level; got list"):
        load_config(p)
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_yaml_is_read_safely(tmp_path):
    p = tmp_path / "c.yaml"
    marker = tmp_path / "pwned"
    p.write_text(f"epochs: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(p)
    assert not marker.exists()


def test_overrides_parse_yaml_values_and_reject_garbage():
    out = apply_overrides(
        {"schedule": "cosine"}, ["schedule.warmup_epochs=2", "compile=true", "model.weights=null"]
    )
    assert out == {
        "schedule": {"name": "cosine", "warmup_epochs": 2},
        "compile": True,
        "model": {"weights": None},
    }
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        apply_overrides({}, ["optimizer.lr"])
    with pytest.raises(ValueError, match="'epochs' holds 3, not a section"):
        apply_overrides({"epochs": 3}, ["epochs.x=1"])


def test_config_is_frozen():
    c = Config()
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="frozen"):
        c.epochs = 3  # type: ignore[misc]


def test_shipped_example_configs_validate():
    from pathlib import Path

    configs = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))
    assert len(configs) >= 4
    for path in configs:
        c = load_config(path)
        assert c.data.root and c.output.startswith("runs/"), path.name


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"data": {"augment": "mirror"}},
            "invalid config (dict): data.augment: expected true/false, or one of 'none', "
            "'flip', 'standard', 'crop', 'trivialaugment', 'randaugment', 'autoaugment', "
            "'augmix', 'photometric', 'ssd'; got 'mirror'",
        ),
        (
            {"data": {"num_workers": "many"}},
            "invalid config (dict): data.num_workers: expected an integer, or 'auto'; got 'many'",
        ),
        (
            {"schedule": 3},
            "invalid config (dict): schedule: expected a string, or a mapping, or null; got 3",
        ),
    ],
)
def test_union_typed_key_says_once_what_it_accepts(data, message):
    with pytest.raises(ValueError) as info:
        config_from_dict(data)
    assert str(info.value) == message  # one line for the key, no per-branch noise (".bool:")


def test_union_message_keeps_other_errors():
    with pytest.raises(ValueError) as info:
        config_from_dict({"data": {"augment": "mirror", "image_sise": 3}, "epochs": 0})
    text = str(info.value)
    assert text.count("data.augment") == 1 and "augment.bool" not in text
    assert "unknown key 'data.image_sise'; did you mean 'image_size'?" in text
    assert "epochs: Input should be greater than 0; got 0" in text
