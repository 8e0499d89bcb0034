"""``build_model``: a validated spec -> a torch module whose forward returns logits.

The builders it dispatches to are registered by the modules ``pipeline.model`` imports (and
checks complete) before anything here can run.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from pipeline.model.errors import ModelBuildError
from pipeline.model.modules import PROBABILITIES, Reused, inner_layers
from pipeline.model.registry import BuildContext, build_sequence
from pipeline.model.trace import assert_shapes
from pipeline.spec.activations import Linear, activation_model
from pipeline.spec.errors import format_path
from pipeline.spec.shapes import LayerShapeError, named_layers
from pipeline.spec.spec import Spec


class Network(nn.Sequential):
    """The spec's network: one child per top-level layer, named as the spec names it
    (``conv2d_1``), so ``get_submodule`` and state-dict keys follow the spec.

    ``forward`` returns logits; ``output_activation`` ('softmax', 'sigmoid' or None) is the
    final activation the spec declared and :meth:`predict_proba` applies.
    """

    def __init__(
        self, modules: OrderedDict[str, nn.Module], output_activation: str | None, name: str
    ):
        super().__init__(modules)
        self.output_activation = output_activation
        self.spec_name = name

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities: the declared output activation on the logits; without one, softmax
        over several outputs and sigmoid for a single one (what the loss would assume)."""
        logits = self(x)
        kind = self.output_activation or ("sigmoid" if logits.shape[1] == 1 else "softmax")
        return PROBABILITIES[kind](logits)

    def train(self, mode: bool = True) -> Network:
        """As nn.Module.train, but a batch norm whose parameters are all frozen stays in
        inference mode (Keras's ``trainable=False``): fine-tuning must not drift its
        statistics. Follows requires_grad, so unfreezing later takes effect on the next call."""
        super().train(mode)
        if mode:
            for m in self.modules():
                params = list(m.parameters(recurse=False))
                if (
                    isinstance(m, nn.modules.batchnorm._BatchNorm)
                    and params
                    and not any(p.requires_grad for p in params)
                ):
                    m.eval()
        return self

    def layer_modules(self) -> OrderedDict[str, nn.Module]:
        """Every named layer's module: top-level ones, layers nested in residual blocks and
        reused models (by their own names), and backbone blocks as ``<backbone>.<block>``."""
        out: OrderedDict[str, nn.Module] = OrderedDict()
        for name, module in self.named_children():
            out[name] = module
            for nested_name, nested in inner_layers(name, module):
                out.setdefault(nested_name, nested)  # a spec layer's own name wins
        return out


def split_output_activation(layers: list[Any]) -> tuple[list[Any], str | None]:
    """The layers with a final softmax/sigmoid removed, and which one it was.

    A final activation layer becomes ``linear`` (the identity, keeping its name and place); a
    final ``activation`` field is cleared, unless a batch norm comes after it.
    """
    last = layers[-1]
    if last.type in PROBABILITIES:
        return [*layers[:-1], Linear(name=last.name, trainable=last.trainable)], last.type
    act = activation_model(getattr(last, "activation", None))
    norm_after = getattr(last, "batch_norm", None) == "after"
    if act is not None and act.type in PROBABILITIES and not norm_after:
        return [*layers[:-1], last.model_copy(update={"activation": None})], act.type
    return layers, None


def build_model(
    spec: Spec, *, device: str | torch.device = "cpu", load_weights: bool = True
) -> Network:
    """Build the spec's model, initialized from ``spec.seed`` (the same spec gives the same
    weights), then check every layer's output shape against the schema.

    ``device="meta"`` builds shapes only (for summaries): nothing is initialized or loaded.
    ``load_weights=False`` skips checkpoints of reused specs and pretrained backbone weights
    (random weights instead), so nothing has to exist on disk or be downloaded.
    Raises ModelBuildError for problems the user can fix.
    """
    shape = spec.model.resolved_input_shape()
    if shape is None:
        raise ModelBuildError(
            "the input shape is unknown: set model.input_shape (or "
            "data.image_size for an image folder)"
        )
    meta = torch.device(device).type == "meta"
    layer_list, output_activation = split_output_activation(list(spec.model.layers))
    build = BuildContext(
        spec=spec,
        meta=meta,
        load_weights=load_weights,
        generator=torch.Generator().manual_seed(spec.seed % 2**63),
        names={path: name for path, name, _ in named_layers(spec.model.layers)},
    )
    # Constructors draw their default init from the global RNG (torch_default, backbones):
    # seed it for reproducibility, in a fork so the caller's RNG state is left as it was.
    with torch.random.fork_rng(devices=[]), torch.device("meta") if meta else nullcontext():
        torch.manual_seed(spec.seed % 2**63)
        try:
            modules, _ = build_sequence(layer_list, shape, build)
        except LayerShapeError as err:
            where = format_path(("model", "layers", *err.path))
            raise ModelBuildError(f"{where}: {err.message}") from None
    last = next(reversed(modules.values()))
    if output_activation is None and isinstance(last, Reused) and last.final_activation:
        # a whole reused model ends this one: its softmax/sigmoid becomes the output activation
        output_activation, last.final_activation = last.final_activation, None
    model = Network(modules, output_activation, spec.name)
    assert_shapes(model, spec)
    return model if meta else model.to(device)
