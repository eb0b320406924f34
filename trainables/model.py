"""The chapter's fully connected classifier, sized by plain numbers."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}
IN_FEATURES = 3 * 32 * 32  # a CIFAR-10 image, flattened


def build_model(
    in_features: int,
    hidden_sizes: Sequence[int],
    out_features: int,
    activation: str = "tanh",
    dropout: float = 0.0,
) -> nn.Sequential:
    """Flatten -> [Linear -> activation (-> Dropout)] * depth -> Linear. Outputs logits.

    With hidden_sizes=[512] and two outputs this is the chapter's net (its LogSoftmax lives in
    the ``nll`` loss, so every loss can share one model). Dropout layers exist only when
    ``dropout`` > 0; they have no parameters.
    """
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for size in hidden_sizes:
        layers += [nn.Linear(width, size), _ACTIVATIONS[activation]()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = size
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_params(in_features: int, hidden_sizes: Sequence[int], out_features: int) -> int:
    """Parameter count without building the model (cheap enough for a search space)."""
    widths = [in_features, *hidden_sizes, out_features]
    return sum(a * b + b for a, b in zip(widths, widths[1:], strict=False))


def size_label(hidden_sizes) -> str:
    """The hidden sizes as one label, everywhere a person reads them: (256, 256) -> "[256,256]".
    A value that is not a sequence (a label already, a missing value) is shown as it is."""
    if not isinstance(hidden_sizes, (tuple, list)):
        return str(hidden_sizes)
    return "[" + ",".join(str(int(h)) for h in hidden_sizes) + "]"
