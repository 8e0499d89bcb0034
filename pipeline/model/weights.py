"""Reading state dicts from files, with errors that name the file and say what to do."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import torch

from pipeline.model.errors import ModelBuildError

# prefixes that wrappers add to every key (torch.compile, DataParallel); stripped on load
WRAPPER_PREFIXES = ("_orig_mod.", "module.")


def read_state_dict(path: Path, missing: str) -> dict[str, torch.Tensor]:
    """The state dict in ``path``: a bare state dict or a checkpoint dict with key ``model``.

    ``missing`` is the message for a file that does not exist.
    """
    if not path.is_file():
        raise ModelBuildError(missing)
    try:
        with warnings.catch_warnings():  # torch's notes on a foreign pickle: the error says it
            warnings.simplefilter("ignore", UserWarning)
            data = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # a corrupt or foreign file: any unpickling error
        # torch's first sentence: the rest is a paragraph (and weights_only=False advice)
        reason = (str(err).strip().splitlines() or [""])[0].split(". ")[0] or type(err).__name__
        raise ModelBuildError(
            f"cannot read weights from {path} ({reason}): train it again, or restore it "
            "(dvc checkout / dvc pull)"
        ) from None
    if isinstance(data, Mapping) and isinstance(data.get("model"), Mapping):
        data = data["model"]
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ModelBuildError(
            f"{path} holds no state dict (expected a dict of tensors, or a checkpoint dict "
            "with key 'model')"
        )
    return {_strip(key): value for key, value in data.items()}


def _strip(key: str) -> str:
    for prefix in WRAPPER_PREFIXES:
        while key.startswith(prefix):
            key = key[len(prefix) :]
    return key


def load_into(module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """``module.load_state_dict(state)`` strictly, failing with a ModelBuildError that lists
    the first missing and unexpected keys."""
    own = set(module.state_dict())
    missing, unexpected = sorted(own - state.keys()), sorted(state.keys() - own)
    if missing or unexpected:
        raise ModelBuildError(
            f"{what} does not fit the model: missing keys {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''}"
        )
    try:
        module.load_state_dict(dict(state))
    except RuntimeError as err:  # same keys, other shapes
        raise ModelBuildError(f"{what} does not fit the model: {err}") from err
