import pytest

from strop._checks import check_choice, check_positive, did_you_mean, fail
from strop._registry import Registry


def test_fail_formats_function_message_and_hint():
    with pytest.raises(ValueError, match=r"^f: x must be > 0; got -1\. Hint: use 1$"):
        fail("f", "x must be > 0; got -1", hint="use 1")
    with pytest.raises(TypeError, match=r"^g: bad$"):
        fail("g", "bad", exc=TypeError)


def test_did_you_mean():
    assert did_you_mean("dise", ["dice", "focal"]) == "; did you mean 'dice'?"
    assert did_you_mean("zzzz", ["dice", "focal"]) == ""


def test_check_choice_lists_choices_and_suggests():
    check_choice("f", "mode", "binary", ["binary", "multiclass"])
    with pytest.raises(
        ValueError,
        match=r"f: mode must be one of 'binary', 'multiclass'; got 'binar'; did you mean 'binary'\?",
    ):
        check_choice("f", "mode", "binar", ["binary", "multiclass"])


@pytest.mark.parametrize(
    ("value", "kwargs", "exc", "match"),
    [
        (0, {}, ValueError, "must be > 0; got 0"),
        (-1, {"allow_zero": True}, ValueError, "must be >= 0; got -1"),
        (1.5, {"integer": True}, TypeError, "must be an integer; got float 1.5"),
        (True, {}, TypeError, "must be a number; got bool True"),
        ("3", {}, TypeError, "must be a number; got str '3'"),
    ],
)
def test_check_positive_rejects(value, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        check_positive("f", "n", value, **kwargs)


def test_check_positive_accepts():
    check_positive("f", "n", 3, integer=True)
    check_positive("f", "n", 0, allow_zero=True)
    check_positive("f", "n", 0.5)


def test_registry_aliases_case_and_miss():
    reg: Registry[int] = Registry("loss")
    reg.register("Dice", "dice_loss")(1)
    reg.register("focal")(2)
    assert reg.get("dice") == 1 and reg.get("DICE-LOSS") == 1 and reg.get("Focal") == 2
    assert reg.names() == ["Dice", "focal"]
    assert "dice_loss" in reg and "nope" not in reg and 3 not in reg
    with pytest.raises(
        ValueError, match=r"unknown loss 'dise'; did you mean 'dice'\? available: Dice, focal"
    ):
        reg.get("dise")
    with pytest.raises(TypeError, match="loss name must be a string; got int 3"):
        reg.get(3)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("dice")(3)
