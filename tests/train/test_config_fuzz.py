"""Config fuzzing: every input either validates or fails with one line that names a key.

Hypothesis draws config dicts (known and mistyped keys at every level, values of every YAML type)
and ``--set`` strings. The contract: ``config_from_dict`` returns a ``Config`` or raises
``ValueError``/``TypeError`` whose message is one line, starts with ``invalid config`` or
``--set``, and names the key at fault — never another exception type, never a traceback of
pydantic internals. ``STROP_FUZZ_EXAMPLES`` raises the count (the long run is in the notes).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from strop.train.config import Config, apply_overrides, config_from_dict

EXAMPLES = int(os.environ.get("STROP_FUZZ_EXAMPLES", "300"))


def _schema(model: type[BaseModel]) -> dict[str, object]:
    """Key -> sub-schema (a dict) or None for a leaf, for every section of the config."""
    out: dict[str, object] = {}
    for name, field in model.model_fields.items():
        ann = field.annotation
        sub = (
            ann
            if isinstance(ann, type) and issubclass(ann, BaseModel)
            else next(
                (
                    a
                    for a in getattr(ann, "__args__", ())
                    if isinstance(a, type) and issubclass(a, BaseModel)
                ),
                None,
            )
        )
        out[name] = _schema(sub) if sub is not None else None
    return out


SCHEMA = _schema(Config)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(
        [
            "auto",
            "none",
            "cosine",
            "resnet18",
            "sgd",
            "max",
            "min",
            "bf16",
            "1e-3",
            "bundled:digits",
        ]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def _mistype(key: str) -> st.SearchStrategy[str]:
    return st.sampled_from([key, key + "s", key[:-1] or "x", key.upper(), key.replace("_", "")])


@st.composite
def config_dicts(draw, schema=SCHEMA, depth=0):
    keys = draw(st.lists(st.sampled_from(sorted(schema)), max_size=6, unique=True))
    out = {}
    for key in keys:
        name = draw(_mistype(key))
        sub = schema[key]
        if isinstance(sub, dict) and draw(st.booleans()):
            out[name] = draw(config_dicts(sub, depth + 1))
        else:
            out[name] = draw(values)
    return out


def _check_message(exc: BaseException) -> None:
    msg = str(exc)
    assert isinstance(exc, (ValueError, TypeError)), f"{type(exc).__name__}: {msg}"
    assert "\n" not in msg, msg
    assert msg.startswith(("invalid config", "--set")), msg
    assert "Traceback" not in msg and "errors.pydantic.dev" not in msg, msg


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config_dicts())
def test_fuzzed_config_dicts_validate_or_name_the_key(data):
    try:
        config = config_from_dict(data)
    except Exception as exc:  # the contract is about which kind of exception
        _check_message(exc)
        # a message names a key of the config: one at top level, or dotted below
        assert any(part in str(exc) for part in [*data, *SCHEMA, "top level"]), str(exc)
    else:
        assert isinstance(config, Config)
        assert config_from_dict(config.to_dict()) == config  # what validates round-trips


set_values = st.one_of(
    st.sampled_from(
        ["0.1", "true", "null", "[1, 2]", "{a: 1}", "'x'", "nan", "-1", "1e9", ":", "{", "]"]
    ),
    st.text(max_size=8),
)


@st.composite
def set_strings(draw):
    path = []
    node: object = SCHEMA
    for _ in range(draw(st.integers(1, 3))):
        if not isinstance(node, dict) or not node:
            break
        key = draw(st.sampled_from(sorted(node)))
        path.append(draw(_mistype(key)))
        node = node[key]
    sep = draw(st.sampled_from(["=", "=", "=", ":", ""]))
    return ".".join(path) + sep + draw(set_values)


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.lists(set_strings(), min_size=1, max_size=3))
def test_fuzzed_set_overrides_validate_or_name_the_key(overrides):
    try:
        config = config_from_dict(apply_overrides({}, overrides))
    except Exception as exc:
        _check_message(exc)
    else:
        assert isinstance(config, Config)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["optimizer.lr"], r"--set: expected KEY=VALUE"),
        (["epochs=ten"], r"invalid config .*epochs"),
        (["data.root.sub=1"], r"invalid config .*data.root"),
        (["epochs=\x1f"], r"--set .*not valid YAML"),
        (["optimizer.lr=[1, 2]"], r"invalid config .*optimizer.lr"),
    ],
)
def test_known_bad_overrides(overrides, match):
    with pytest.raises(ValueError, match=match):
        config_from_dict(apply_overrides({"data": {"root": "x"}}, overrides))
