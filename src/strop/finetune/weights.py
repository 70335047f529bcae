"""Safe weight loading with a report of what did and did not fit.

Sources: a local file (``.pth``/``.pt`` state dict or full checkpoint, ``.safetensors``), a
state-dict mapping, or a torchvision ``WeightsEnum`` member (read from the torch hub cache,
``$TORCH_HOME/hub/checkpoints/<file name of the weights URL>``, and downloaded only when absent).

Pickle files are read with ``torch.load(weights_only=True)``: a file that would need to run code
to load (any class beyond tensors and plain containers) is refused with
:class:`UnsafeWeightsError` before anything in it runs. ``trust_pickle=True`` lifts that for
trusted legacy checkpoints — unsafe: unpickling an untrusted file can run arbitrary code.

Loading is all or nothing unless ``strict=False``: the report is computed first, and a model is
never left half-loaded by an error.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import Tensor, nn
from torchvision.models import WeightsEnum

from strop._checks import fail
from strop.finetune.zoo import FAMILIES, architecture_of, spec_of

__all__ = [
    "LoadReport",
    "UnsafeWeightsError",
    "file_sha256",
    "hub_cache_path",
    "load_weights",
    "read_state_dict",
]

WeightsSource = str | os.PathLike | Mapping[str, Tensor] | WeightsEnum

# checkpoint dicts keep the weights under one of these keys (torchvision references, Lightning,
# timm, common training scripts)
_STATE_KEYS = ("state_dict", "model", "model_state_dict", "model_state", "net", "network", "module")
# wrappers that prefix every key: DataParallel/DDP, torch.compile, Lightning modules
_PREFIXES = ("module.", "_orig_mod.", "model.")


class UnsafeWeightsError(ValueError):
    """A weights file needs code execution to load and was refused (``weights_only=True``)."""


@dataclass(frozen=True)
class LoadReport:
    """What happened when weights were loaded into a model.

    ``loaded``: tensors copied. ``missing``: model keys the source lacks. ``unexpected``: source
    keys the model lacks. ``mismatched``: ``(key, model shape, source shape)`` outside the head.
    ``head_reset``: head keys not loaded, so the model's head keeps its fresh initialisation:
    because the class count differs, or the file has no head, or (``head_reason ==
    "keep_head=False"``) because fine-tuning asked for a new head. ``ignored``: keys of auxiliary
    heads the model was built without. ``ok`` is true when nothing is missing, unexpected or
    mismatched. :meth:`summary` is the one line to print.
    """

    source: str
    loaded: int
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = ()
    head_reset: tuple[str, ...] = ()
    ignored: tuple[str, ...] = field(default=())
    head_reason: str = "the class count differs"

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        def few(keys: tuple[str, ...]) -> str:
            shown = ", ".join(keys[:5])
            return shown + (f", ... ({len(keys)} in all)" if len(keys) > 5 else "")

        lines = [f"{self.source}: {self.loaded} tensors loaded"]
        if self.missing:
            lines.append(f"missing in source ({len(self.missing)}): {few(self.missing)}")
        if self.unexpected:
            lines.append(f"unexpected in source ({len(self.unexpected)}): {few(self.unexpected)}")
        if self.mismatched:
            shown = ", ".join(
                f"{k} model {tuple(a)} vs source {tuple(b)}" for k, a, b in self.mismatched[:5]
            )
            lines.append(f"shape mismatch ({len(self.mismatched)}): {shown}")
        if self.head_reset:
            why = (
                "for the new class count"
                if self.head_reason == "the class count differs"
                else f"({self.head_reason})"
            )
            lines.append(f"head re-initialised {why}: {few(self.head_reset)}")
        if self.ignored:
            lines.append(f"ignored (aux heads not built): {len(self.ignored)} tensors")
        return "; ".join(lines)

    def summary(self) -> str:
        """One line for a log: what was loaded and whether the head is the source's or new."""
        if self.head_reset:
            head = (
                f"new head ({self.head_reason}), {len(self.head_reset)} tensors left as initialised"
            )
        else:
            head = "head loaded from the source (same class count)"
        text = f"weights {self.source}: {self.loaded} tensors loaded; {head}"
        problems = len(self.missing) + len(self.unexpected) + len(self.mismatched)
        return text + (f"; {problems} keys did not fit (partial load)" if problems else "")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_sha256(func: str, path: Path, expected: str) -> None:
    if not isinstance(expected, str) or not re.fullmatch(r"[0-9a-fA-F]{8,64}", expected):
        fail(
            func,
            f"sha256 must be a hex digest (the full 64 characters, or a prefix of at least 8); got {expected!r}",
        )
    actual = file_sha256(path)
    if not actual.startswith(expected.lower()):
        fail(
            func,
            f"SHA-256 of '{path}' is {actual}, expected {expected.lower()}; the file was not loaded",
            hint="the file is corrupt, incomplete or not the one you meant",
        )


def hub_cache_path(weights: WeightsEnum) -> Path:
    """Where torch hub keeps ``weights``: ``$TORCH_HOME/hub/checkpoints/<file of the URL>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def _torch_load(func: str, path: Path, trust_pickle: bool) -> Any:
    with open(path, "rb") as f:
        magic = f.read(4)
    # torch.save writes a zip archive; legacy files and raw pickles start with the PROTO opcode
    if not (magic.startswith(b"PK\x03\x04") or magic.startswith(b"\x80")):
        fail(
            func,
            f"cannot read '{path}': the file is corrupt or truncated (not a zip archive or a pickle)",
        )
    try:
        with warnings.catch_warnings():
            # torch notes non-default pickle protocols of legacy files; harmless for loading
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc):
            found = re.search(r"WeightsUnpickler error:\s*(.+)", str(exc))
            why = found.group(1).strip() if found else "it holds objects other than tensors"
            raise UnsafeWeightsError(
                f"{func}: refused to load '{path}': it is a pickle that needs code to run to load "
                f"({why}). Hint: convert it to .safetensors, or, only if you trust where it "
                "came from, pass trust_pickle=True (unsafe: the file can run any code)"
            ) from None
        fail(
            func, f"cannot read '{path}': the file is corrupt or truncated (UnpicklingError: {exc})"
        )
    except (
        RuntimeError,
        EOFError,
        ValueError,
        OSError,
        IndexError,
        KeyError,
        AttributeError,
    ) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        first = str(exc).splitlines()[0] if str(exc) else "unexpected end of file"
        fail(
            func,
            f"cannot read '{path}': the file is corrupt or truncated ({type(exc).__name__}: {first})",
        )


def _unwrap(func: str, obj: Any, where: str) -> dict[str, Tensor]:
    if isinstance(obj, nn.Module):  # a whole pickled model (trusted legacy checkpoint)
        return obj.state_dict()
    if not isinstance(obj, Mapping):
        fail(func, f"{where} holds a {type(obj).__name__}, not a state dict", exc=TypeError)
    if obj and all(isinstance(v, Tensor) for v in obj.values()):
        return obj  # type: ignore[return-value]  # keeps state_dict()._metadata (module versions)
    for key in _STATE_KEYS:
        inner = obj.get(key)
        if isinstance(inner, (Mapping, nn.Module)):
            return _unwrap(func, inner, f"{where}[{key!r}]")
    keys = ", ".join(repr(k) for k in list(obj)[:10])
    fail(
        func,
        f"{where} is not a state dict and holds none under {', '.join(map(repr, _STATE_KEYS))}; "
        f"its keys are {keys}",
    )


def _strip_prefixes(
    state: dict[str, Tensor], own: Mapping[str, Tensor]
) -> tuple[dict[str, Tensor], dict | None]:
    # module versions (MNASNet, BatchNorm) travel in state_dict()._metadata, keyed by module path
    meta = getattr(state, "_metadata", None)
    meta = dict(meta) if meta is not None else None
    changed = True
    while changed and state:
        changed = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in state) and not any(
                k.startswith(prefix) for k in own
            ):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                if meta is not None:
                    meta = {k[len(prefix) :]: v for k, v in meta.items() if k.startswith(prefix)}
                changed = True
    return state, meta


def read_state_dict(
    path: str | os.PathLike,
    *,
    sha256: str | None = None,
    trust_pickle: bool = False,
    func: str = "read_state_dict",
) -> dict[str, Tensor]:
    """A state dict from a file: ``.safetensors``, or a ``torch.save`` file holding a state dict or
    a checkpoint dict with the weights under ``"state_dict"``/``"model"``/... .

    The SHA-256 (full digest or a prefix of 8+ hex characters, like the hub's file names) is
    checked before anything is parsed. Errors name the file: missing (``FileNotFoundError``),
    corrupt or truncated (``ValueError``), unsafe pickle (:class:`UnsafeWeightsError`).
    """
    path = Path(os.fspath(path))
    if not path.is_file():
        raise FileNotFoundError(f"{func}: weights file '{path}' does not exist")
    if sha256 is not None:
        _check_sha256(func, path, sha256)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except SafetensorError as exc:
            fail(
                func,
                f"cannot read '{path}': the file is corrupt or truncated (SafetensorError: {exc})",
            )
    obj = _torch_load(func, path, trust_pickle)
    if isinstance(obj, Mapping) and isinstance(obj.get("model_shared"), Mapping):
        # a strop checkpoint whose frozen backbone lives in another file (a feature-cache run
        # stopped before its end made best.pt whole): its "model" alone is the head
        fail(
            func,
            f"'{path}' holds only the trained part of the model; its frozen tensors are in "
            f"'{path.parent / str(obj['model_shared'].get('file'))}' (a strop run with the feature "
            "cache that did not finish)",
            hint="resume the run to its end (best.pt is then written whole), or read it with "
            "strop.train.load_checkpoint, which merges the two files",
        )
    return _unwrap(func, obj, f"'{path}'")


def _weights_state_dict(
    func: str, weights: WeightsEnum, sha256: str | None
) -> tuple[dict[str, Tensor], str]:
    cached = hub_cache_path(weights)
    if cached.is_file():
        # read it ourselves: weights_only, our error messages, the optional SHA-256 check
        return read_state_dict(cached, sha256=sha256, func=func), f"{weights} ({cached})"
    try:
        state = weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except Exception as exc:  # no network, proxy, HTTP error: all mean the same to the user
        fail(
            func,
            f"weights {weights} are not in the hub cache ('{cached}') and downloading {weights.url} "
            f"failed ({type(exc).__name__}: {exc})",
            hint=f"on an offline machine, copy the file to '{cached}' (TORCH_HOME sets the folder)",
        )
    if sha256 is not None:
        _check_sha256(func, cached, sha256)
    return state, f"{weights} ({cached})"


def _resolve_source(
    func: str, source: Any, *, sha256: str | None, trust_pickle: bool
) -> tuple[dict[str, Tensor], str]:
    if isinstance(source, WeightsEnum):
        return _weights_state_dict(func, source, sha256)
    if isinstance(source, (str, os.PathLike)):
        return read_state_dict(
            source, sha256=sha256, trust_pickle=trust_pickle, func=func
        ), f"'{os.fspath(source)}'"
    if isinstance(source, Mapping):
        if sha256 is not None:
            fail(func, "sha256 checks a file; got a state dict in memory", exc=TypeError)
        return _unwrap(func, source, "the state dict"), "the state dict"
    fail(
        func,
        f"source must be a file path, a state dict or a torchvision weights enum; got {type(source).__name__}",
        exc=TypeError,
    )


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _match(
    model: nn.Module, state: Mapping[str, Tensor], source: str, keep_head: bool = True
) -> tuple[dict[str, Tensor], LoadReport]:
    spec = spec_of("load_weights", model)
    family = FAMILIES[type(model).__name__]
    own = model.state_dict()
    state, meta = _strip_prefixes(state, own)
    # aux heads the family has but this model was built without (aux_logits=False)
    absent_aux = tuple(
        {p.split(".")[0] for p in family.aux_heads} - {p.split(".")[0] for p in spec.aux_heads}
    )
    heads = spec.output_layers
    to_load: OrderedDict[str, Tensor] = OrderedDict()
    # files without versions (safetensors, hand-made dicts) are taken to be in the current format
    to_load._metadata = meta if meta is not None else own._metadata  # type: ignore[attr-defined]
    unexpected, mismatched, head_reset, ignored = [], [], [], []
    for key, value in state.items():
        if not isinstance(value, Tensor):
            fail(
                "load_weights",
                f"{source} maps {key!r} to a {type(value).__name__}, not a Tensor",
                exc=TypeError,
            )
        if key not in own:
            (ignored if _under(key, absent_aux) else unexpected).append(key)
        elif own[key].shape != value.shape:
            if _under(key, heads):
                head_reset.append(key)
            else:
                mismatched.append((key, tuple(own[key].shape), tuple(value.shape)))
        elif not keep_head and _under(key, heads):
            head_reset.append(key)  # fine-tuning: the source's classifier is not the new task's
        else:
            to_load[key] = value
    missing = []
    for key in own:
        if key in state:
            continue
        if _under(key, heads):
            head_reset.append(key)  # a backbone-only file: the head keeps its fresh init
        elif not key.endswith("num_batches_tracked"):  # absent from pre-0.4 files; BN fills it
            missing.append(key)
    report = LoadReport(
        source=source,
        loaded=len(to_load),
        missing=tuple(missing),
        unexpected=tuple(unexpected),
        mismatched=tuple(mismatched),
        head_reset=tuple(head_reset),
        ignored=tuple(ignored),
        head_reason=_head_reason(state, own, heads, keep_head),
    )
    return to_load, report


def _head_reason(
    state: Mapping[str, Tensor], own: Mapping[str, Tensor], heads: tuple[str, ...], keep_head: bool
) -> str:
    in_file = [k for k in own if _under(k, heads) and k in state]
    if not in_file:
        return "the source has no head"
    if any(state[k].shape != own[k].shape for k in in_file):
        return "the class count differs"
    return "keep_head=False"


def load_weights(
    model: nn.Module,
    source: WeightsSource,
    *,
    strict: bool = True,
    sha256: str | None = None,
    trust_pickle: bool = False,
    keep_head: bool = True,
) -> LoadReport:
    """Load weights into ``model`` in place and return a :class:`LoadReport`.

    ``source``: a file path (``.pth``/``.pt``/``.safetensors``; checkpoint dicts and
    ``module.``/``_orig_mod.``/``model.`` key prefixes are handled), a state dict, or a torchvision
    ``WeightsEnum`` member (e.g. ``ResNet18_Weights.IMAGENET1K_V1``; read from the hub cache).

    Head keys whose shape differs (another class count) are dropped and the model's new head
    keeps its initialisation; ``keep_head=False`` drops the head's keys of the same shape too
    (what fine-tuning wants, see :func:`~strop.finetune.build_model`); keys of aux heads the model was built without are ignored. Any other
    missing, unexpected or shape-mismatched key raises ``ValueError`` with the report and loads
    nothing, unless ``strict=False``: then the fitting tensors are loaded and a ``UserWarning``
    carries the report. A source that shares no tensor with the model always raises.

    ``sha256`` (hex digest or 8+ character prefix) is checked before the file is parsed.
    ``trust_pickle=True`` loads pickles that need code execution (old checkpoints holding custom
    classes) — **unsafe**: only for files from a trusted source.
    """
    if not isinstance(model, nn.Module):
        fail(
            "load_weights",
            f"model must be a torch.nn.Module; got {type(model).__name__}",
            exc=TypeError,
        )
    state, where = _resolve_source("load_weights", source, sha256=sha256, trust_pickle=trust_pickle)
    if not isinstance(keep_head, bool):
        fail(
            "load_weights",
            f"keep_head must be a bool; got {type(keep_head).__name__} {keep_head!r}",
            exc=TypeError,
        )
    to_load, report = _match(model, state, where, keep_head)
    if not to_load:
        fail(
            "load_weights",
            f"{where} shares no tensor with {type(model).__name__} ({report})",
            hint="is it a checkpoint of another architecture?",
        )
    if not report.ok and strict:
        fail(
            "load_weights",
            f"{where} does not fit {architecture_of(model) or type(model).__name__}; nothing was loaded ({report})",
            hint="pass strict=False to load the tensors that fit and keep the rest as initialised",
        )
    result = model.load_state_dict(to_load, strict=False)
    # every key we pass exists with the right shape, so torch can only report what we did not pass
    assert not result.unexpected_keys, result.unexpected_keys
    if not report.ok:
        warnings.warn(f"load_weights: partial load: {report}", UserWarning, stacklevel=2)
    return report
