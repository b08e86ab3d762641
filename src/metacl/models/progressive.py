"""Progressive neural networks: one column per task, lateral adapters between them.

Every column has the same architecture as the base network (the MLP's linear layers,
or the small CNN's convolution blocks, hidden layer and head). Column ``k`` also
receives, at each layer after the first, the activations that columns ``0..k-1``
feed into that layer, through an *adapter* (Rusu et al. 2016, eq. 2):

    h_i^k = f(W_i^k h_{i-1}^k
              + U_i^k f(V_i^k [a_i^{k:0} h_{i-1}^0, ..., a_i^{k:k-1} h_{i-1}^{k-1}]))

with a learned scalar ``a`` per earlier column, a projection ``V`` back to one
column's width (a 1x1 convolution for convolution layers) and ``U`` into the layer's
output (a 3x3 convolution for convolution layers, matching ``W``).

All columns are built up front (their number is fixed when the model is built), so
the model's ``state_dict`` keeps one layout from the first experience to the last; a
column that no task has reached yet is simply never run. The strategy
(:class:`metacl.strategies.progressive.PNN`) trains one column per task and freezes
the others; the model itself only computes.

Example:
    >>> import torch
    >>> net = ProgressiveNet.mlp((1, 8, 8), 10, hidden=[32, 32], columns=3)
    >>> net(torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 2])).shape
    torch.Size([4, 10])

References:
    Rusu et al., "Progressive Neural Networks", arXiv:1606.04671, 2016.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from metacl.errors import ConfigError, ScenarioError
from metacl.models.base import MODELS
from metacl.models.cnn import SmallCNN
from metacl.models.mlp import MLP

__all__ = ["ProgressiveNet", "progressive_from"]


@dataclass(frozen=True)
class _Layer:
    """One layer of a column: ``kind`` "linear" or "conv", sizes, and what follows."""

    kind: str
    in_size: int
    out_size: int
    pool: bool = False  # 2x2 max-pool after the activation (conv layers)
    flatten: bool = False  # flatten the output (the last conv layer before a linear)
    last: bool = False  # the output layer: no activation


def _main(layer: _Layer) -> nn.Module:
    if layer.kind == "conv":
        return nn.Conv2d(layer.in_size, layer.out_size, 3, padding=1)
    return nn.Linear(layer.in_size, layer.out_size)


class _Adapter(nn.Module):
    """Lateral connection from ``sources`` earlier columns into one layer."""

    def __init__(self, layer: _Layer, sources: int) -> None:
        super().__init__()
        # one learned scale per earlier column, initialised small as in the paper
        self.alpha = nn.Parameter(torch.full((sources,), 0.1))
        if layer.kind == "conv":
            self.project = nn.Conv2d(sources * layer.in_size, layer.in_size, 1)
            self.out = nn.Conv2d(layer.in_size, layer.out_size, 3, padding=1)
        else:
            self.project = nn.Linear(sources * layer.in_size, layer.in_size)
            self.out = nn.Linear(layer.in_size, layer.out_size)

    def forward(self, inputs: list[Tensor]) -> Tensor:
        scaled = [a * h for a, h in zip(self.alpha, inputs, strict=True)]
        return self.out(torch.relu(self.project(torch.cat(scaled, dim=1))))


class _Column(nn.Module):
    def __init__(self, layers: list[_Layer], index: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_main(layer) for layer in layers)
        # adapters into every layer but the first; none in the first column
        self.adapters = nn.ModuleList(
            _Adapter(layer, index) for layer in layers[1:] if index > 0
        )


class ProgressiveNet(nn.Module):
    """A progressive network of ``columns`` columns.

    Use :meth:`mlp` or :meth:`cnn` (or :func:`progressive_from` to copy a built
    :class:`~metacl.models.MLP` / :class:`~metacl.models.SmallCNN`'s architecture).

    Args:
        layers: The layers of one column (see :meth:`mlp`, :meth:`cnn`).
        columns: Number of columns (one per task).
        in_shape: Shape of one input.
    """

    def __init__(
        self, layers: list[_Layer], columns: int, in_shape: tuple[int, ...]
    ) -> None:
        super().__init__()
        if columns < 1:
            raise ConfigError(f"progressive columns = {columns} must be >= 1")
        self.spec = list(layers)
        self.in_shape = tuple(in_shape)
        self.columns = nn.ModuleList(_Column(self.spec, k) for k in range(columns))
        self.n_outputs = layers[-1].out_size

    @classmethod
    def mlp(
        cls,
        input_shape: tuple[int, ...],
        n_outputs: int,
        *,
        hidden: list[int] = (400, 400),  # noqa: B006
        columns: int = 5,
    ) -> ProgressiveNet:
        """Columns shaped like :class:`~metacl.models.MLP` (flattened input)."""
        sizes = [math.prod(input_shape), *hidden, n_outputs]
        if any(s < 1 for s in sizes):
            raise ConfigError(f"progressive MLP sizes must be positive: {sizes}")
        layers = [
            _Layer("linear", a, b, last=i == len(sizes) - 2)
            for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True))
        ]
        return cls(layers, columns, input_shape)

    @classmethod
    def cnn(
        cls,
        input_shape: tuple[int, ...],
        n_outputs: int,
        *,
        channels: list[int] = (32, 64),  # noqa: B006
        hidden: int = 256,
        columns: int = 5,
    ) -> ProgressiveNet:
        """Columns shaped like :class:`~metacl.models.SmallCNN` without BatchNorm."""
        if len(input_shape) != 3:
            raise ConfigError(
                f"a progressive cnn needs image inputs (channels, height, width), got "
                f"{tuple(input_shape)}; use the mlp base for flat inputs"
            )
        c, height, width = input_shape
        if min(height, width) < 2 ** len(channels):
            raise ConfigError(
                f"input {height}x{width} is too small for {len(channels)} pooling blocks"
            )
        layers = []
        for i, out in enumerate(channels):
            layers.append(
                _Layer("conv", c, out, pool=True, flatten=i == len(channels) - 1)
            )
            c, height, width = out, height // 2, width // 2
        flat = c * height * width
        if hidden:
            layers.append(_Layer("linear", flat, hidden))
            flat = hidden
        layers.append(_Layer("linear", flat, n_outputs, last=True))
        return cls(layers, columns, input_shape)

    def column_parameters(self, k: int) -> list[nn.Parameter]:
        """The parameters of column ``k`` (its layers and its adapters)."""
        return list(self.columns[k].parameters())

    def forward(self, x: Tensor, task: Tensor | None = None) -> Tensor:
        """Each sample's output from the column of its task; ``task`` is ``(batch,)``.

        Columns ``0..max(task)`` run on the whole batch (column ``k`` needs the
        activations of every earlier column).

        Raises:
            ScenarioError: ``task`` is missing or out of range.
        """
        if task is None:
            raise ScenarioError(
                "a progressive network picks its column by task id and got none; use "
                "it with strategy 'pnn' on a task_incremental stream"
            )
        if len(task) != len(x):
            raise ScenarioError(f"got {len(x)} inputs but {len(task)} task ids")
        needed = int(task.max()) + 1 if len(task) else 1
        if needed > len(self.columns) or (len(task) and int(task.min()) < 0):
            raise ScenarioError(
                f"task ids must lie in [0, {len(self.columns)}) for a progressive "
                f"network of {len(self.columns)} columns; got {task.unique().tolist()}"
            )
        # NOTE: when every sample belongs to the last column needed (a task-incremental
        # batch), the earlier columns only feed it, so their output layers are skipped
        single = len(task) > 0 and bool((task == needed - 1).all())
        h0 = x.flatten(1) if self.spec[0].kind == "linear" else x
        # inputs[k][i]: what column k feeds into its layer i
        inputs: list[list[Tensor]] = []
        outputs = []
        for k in range(needed):
            column = self.columns[k]
            h = h0
            feeds = []
            for i, (layer, spec) in enumerate(
                zip(column.layers, self.spec, strict=True)
            ):
                feeds.append(h)
                if spec.last and single and k < needed - 1:
                    break
                z = layer(h)
                if k > 0 and i > 0:
                    z = z + column.adapters[i - 1]([inputs[j][i] for j in range(k)])
                if spec.last:
                    h = z
                    break
                h = torch.relu(z)
                if spec.pool:
                    h = nn.functional.max_pool2d(h, 2)
                if spec.flatten:
                    h = h.flatten(1)
            inputs.append(feeds)
            outputs.append(h)
        if needed == 1 or single:
            return outputs[-1]
        stacked = torch.stack(outputs)  # (columns, batch, outputs)
        return stacked[task, torch.arange(len(x), device=x.device)]


def progressive_from(
    model: nn.Module, columns: int, input_shape: tuple[int, ...]
) -> ProgressiveNet:
    """A progressive network whose columns copy the architecture of ``model``, built
    for inputs of ``input_shape``.

    Column 0 also copies ``model``'s weights, so a seeded run starts from the same
    initialisation as the base network.

    Raises:
        ConfigError: ``model`` is neither an MLP nor a SmallCNN without BatchNorm.
    """
    if isinstance(model, ProgressiveNet):
        return model
    if isinstance(model, MLP):
        linears = [m for m in model.features if isinstance(m, nn.Linear)]
        hidden = [m.out_features for m in linears]
        net = ProgressiveNet.mlp(
            input_shape, model.head.out_features, hidden=hidden, columns=columns
        )
        mains = [*linears, model.head]
    elif isinstance(model, SmallCNN):
        if any(isinstance(m, nn.BatchNorm2d) for m in model.features):
            raise ConfigError(
                "progressive columns do not support BatchNorm (its running statistics "
                "would change frozen columns); set model.batch_norm = false"
            )
        convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
        linears = [m for m in model.features if isinstance(m, nn.Linear)]
        channels = [c.out_channels for c in convs]
        hidden = linears[0].out_features if linears else 0
        net = ProgressiveNet.cnn(
            input_shape,
            model.head.out_features,
            channels=channels,
            hidden=hidden,
            columns=columns,
        )
        mains = [*convs, *linears, model.head]
    else:
        raise ConfigError(
            f"progressive columns can copy an mlp or a cnn model, not "
            f"{type(model).__name__}; use model.name = mlp or cnn"
        )
    with torch.no_grad():
        for target, source in zip(net.columns[0].layers, mains, strict=True):
            target.load_state_dict(source.state_dict())
    return net.to(next(model.parameters()).device)


@MODELS.register(
    "progressive", summary="progressive network: one column per task, lateral adapters"
)
def progressive(
    input_shape: tuple[int, ...],
    n_outputs: int,
    *,
    base: Literal["mlp", "cnn"] = "mlp",
    columns: int = 5,
    hidden: list[int] = (400, 400),  # noqa: B006
    channels: list[int] = (32, 64),  # noqa: B006
    cnn_hidden: int = 256,
) -> ProgressiveNet:
    """Build a progressive network directly (the ``pnn`` strategy also builds one from
    an ``mlp`` or ``cnn`` model).

    Args:
        base: Architecture of each column: "mlp" or "cnn".
        columns: Number of columns; at least the stream's number of tasks.
        hidden: Hidden widths of an MLP column.
        channels: Convolution channels of a CNN column.
        cnn_hidden: Width of a CNN column's hidden linear layer (0: none).
    """
    if base == "mlp":
        return ProgressiveNet.mlp(
            input_shape, n_outputs, hidden=list(hidden), columns=columns
        )
    if base == "cnn":
        return ProgressiveNet.cnn(
            input_shape,
            n_outputs,
            channels=list(channels),
            hidden=cnn_hidden,
            columns=columns,
        )
    raise ConfigError(f"progressive base = {base!r}; valid choices: mlp, cnn")
