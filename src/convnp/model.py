"""Sequential: a network as an ordered list of layers (SPEC §1: back-propagation runs the
layers' backward passes in reverse order, each turning ∂E/∂y into ∂E/∂x)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from convnp.layers.base import Layer, all_finite, check_finite


class Sequential:
    """Runs layers in order forward and in reverse order backward.

    Parameters are named like PyTorch's ``state_dict``: ``"<index>.<key>"``, e.g.
    ``"0.weight"``; those names key the optimizer state and the model files.
    """

    def __init__(self, *layers: Layer) -> None:
        for index, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(
                    f"Sequential: item {index} is {type(layer).__name__}, not a convnp Layer"
                )
        self.layers: list[Layer] = list(layers)
        self.training = True
        # (C, H, W) of one input, once known (fit, convnp.load); summary() defaults to it
        self.input_shape: tuple[int, ...] | None = None
        self.loss: Any = None  # set by compile(); used by fit/evaluate/predict_proba
        self.optimizer: Any = None

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int) -> Layer:
        return self.layers[index]

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def __repr__(self) -> str:
        lines = [f"  ({index}): {layer!r}" for index, layer in enumerate(self.layers)]
        return "Sequential(\n" + "\n".join(lines) + "\n)"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Run the layers in order, on the calling thread.

        The network's input is scanned for NaN/inf here, once (``check_finite``); layers
        check only shapes and dtypes. An error raised by a layer says which one it is. For
        inference on several cores see ``convnp.runtime.parallel.predict_in_blocks``.
        """
        count = len(self.layers)
        if isinstance(x, np.ndarray) and x.dtype.kind == "f" and count and not all_finite(x):
            # the message (a repr) is built only for the error, not on every forward
            check_finite(x, f"layer 0 of {count}: {self.layers[0]!r}")
        for index, layer in enumerate(self.layers):
            try:
                x = layer.forward(x)
            except ValueError as error:  # say where in the network the bad input arrived
                raise type(error)(f"layer {index} of {count}: {error}") from None
        return x

    def backward(self, dy: np.ndarray, *, input_grad: bool = True) -> np.ndarray | None:
        """Back-propagate ∂E/∂y; returns ∂E/∂x, or None with ``input_grad=False`` (training
        needs only the parameter gradients, so the first layer skips computing dx).

        Each layer's cache is released as soon as its backward has run (``Layer.release``),
        so the peak memory of a training step falls as back-propagation proceeds instead of
        holding every activation to the end; another backward needs another forward.
        """
        if not self.layers:
            return dy if input_grad else None
        first, *rest = self.layers
        for layer in reversed(rest):
            dy = layer.backward(dy)
            layer.release()
        dx = None
        if input_grad:
            dx = first.backward(dy)
        else:
            first.backward_params(dy)
        first.release()
        return dx

    def apply_regularizers(self) -> float:
        """Run every layer's attached penalties (after backward): each adds its gradient to
        the layer's grads; the summed penalty value is returned for the reported loss."""
        return float(sum(penalty(layer) for layer in self.layers for penalty in layer.regularizers))

    def predict(self, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        """Forward in eval mode and within ``no_grad()``, in batches (memory stays bounded),
        restoring the mode.

        Runs on the calling thread; ``convnp.runtime.parallel.predict_in_blocks`` computes the
        same output on several cores.
        """
        was_training = self.training
        self.eval()
        try:
            with self.no_grad():  # no backward follows: keep nothing (memory stays bounded)
                starts = range(0, len(x), batch_size)
                outputs = [self.forward(x[i : i + batch_size]) for i in starts]
        finally:
            self.train(was_training)
        return np.concatenate(outputs) if outputs else np.empty((0,))

    # -- parameters and state -----------------------------------------------------------
    def parameters(self) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """Yield (dotted name, param, grad) for every learnable array."""
        for index, layer in enumerate(self.layers):
            for key, param in layer.params.items():
                yield f"{index}.{key}", param, layer.grads[key]

    def num_parameters(self) -> int:
        return sum(layer.num_parameters() for layer in self.layers)

    @property
    def dtype(self) -> np.dtype | None:
        for layer in self.layers:
            if layer.dtype is not None:
                return layer.dtype
        return None

    def train(self, mode: bool = True) -> Sequential:
        self.training = mode
        for layer in self.layers:
            layer.train(mode)
        return self

    def eval(self) -> Sequential:
        return self.train(False)

    @contextlib.contextmanager
    def no_grad(self) -> Iterator[Sequential]:
        """``with model.no_grad(): ...``: forward keeps nothing for backward in any layer
        (``Layer.no_grad``), for inference no backward follows; restored on exit.

        Outside it a forward keeps what backward needs in eval mode too, so a network in
        eval mode back-propagates as in PyTorch (input gradients, saliency maps).
        """
        with contextlib.ExitStack() as stack:
            for layer in self.layers:
                stack.enter_context(layer.no_grad())
            yield self

    def astype(self, dtype: Any) -> Sequential:
        """Convert every layer (rebinds params: build the optimizer afterwards)."""
        for layer in self.layers:
            layer.astype(dtype)
        return self

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of all params and buffers, keyed "<index>.<key>"."""
        state = {}
        for index, layer in enumerate(self.layers):
            for store in (layer.params, layer.buffers):
                for key, value in store.items():
                    state[f"{index}.{key}"] = value.copy()
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Copy values into the existing arrays (in place); names and shapes must match."""
        expected = {}
        for index, layer in enumerate(self.layers):
            for store in (layer.params, layer.buffers):
                for key, value in store.items():
                    expected[f"{index}.{key}"] = value
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(
                f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}"
            )
        for name, target in expected.items():
            value = np.asarray(state[name])
            if value.shape != target.shape:
                raise ValueError(
                    f"load_state_dict: '{name}' has shape {value.shape}, "
                    f"model expects {target.shape}"
                )
            target[...] = value

    # -- inspection ---------------------------------------------------------------------
    def output_shapes(self, input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Per-layer output shapes (without the batch axis) for one input of ``input_shape``."""
        dtype = self.dtype or np.float32
        x = np.zeros((1, *input_shape), dtype=dtype)
        shapes = []
        was_training = self.training
        self.eval()
        try:
            with self.no_grad():
                for layer in self.layers:
                    x = layer.forward(x)
                    shapes.append(tuple(x.shape[1:]))
        finally:
            self.train(was_training)
        return shapes

    def summary(self, input_shape: tuple[int, ...] | None = None, *, print_fn: Any = print) -> str:
        """Table of each layer's output shape and parameter count; printed and returned.

        ``input_shape`` excludes the batch axis, e.g. (1, 28, 28); by default the shape the
        model knows (``self.input_shape``, set by ``fit`` and ``convnp.load``). A fully
        convolutional network can be summarised at any spatial size.
        """
        if input_shape is None:
            input_shape = self._known_input_shape("summary")
        shapes = self.output_shapes(tuple(input_shape))
        rows = [("#", "layer", "output shape", "params")]
        rows.append(("", "input", str(tuple(input_shape)), ""))
        for index, (layer, shape) in enumerate(zip(self.layers, shapes)):
            rows.append((str(index), repr(layer), str(shape), f"{layer.num_parameters():,}"))
        widths = [max(len(row[col]) for row in rows) for col in range(4)]
        aligns = (">", "<", "<", ">")
        lines = [
            "  ".join(f"{cell:{align}{width}}" for cell, align, width in zip(row, aligns, widths))
            for row in rows
        ]
        rule = "-" * len(lines[0])
        lines.insert(1, rule)
        lines.append(rule)
        lines.append(f"total parameters: {self.num_parameters():,}   dtype: {self.dtype}")
        text = "\n".join(lines)
        if print_fn is not None:
            print_fn(text)
        return text

    def training_memory(
        self, input_shape: tuple[int, ...], batch_size: int
    ) -> list[tuple[str, int, int]]:
        """Estimated bytes a training step holds, per layer: (layer, kept, workspace).

        "kept" is what the layer's forward keeps for backward (``Layer.memory_estimate``);
        an array kept by two neighbours (a ReLU's output that the next convolution keeps as
        its input) is counted once, at the first. Add the parameters and their gradients
        and the transient y/dx of one layer (``memory_summary``) for the step's peak.
        """
        shapes = [tuple(input_shape), *self.output_shapes(tuple(input_shape))]
        sizes = self._activation_bytes(input_shape, batch_size)
        rows, previous_kept_output = [], False
        for index, layer in enumerate(self.layers):
            estimate = layer.memory_estimate((batch_size, *shapes[index]))
            kept = estimate.other_bytes
            if estimate.keeps_input and not previous_kept_output:
                kept += sizes[index]
            if estimate.keeps_output:
                kept += sizes[index + 1]
            rows.append((repr(layer), kept, estimate.workspace_bytes))
            previous_kept_output = estimate.keeps_output
        return rows

    def _activation_bytes(self, input_shape: tuple[int, ...], batch_size: int) -> list[int]:
        """Bytes of the network's input and of every layer's output, for ``batch_size``."""
        itemsize = np.dtype(self.dtype or np.float32).itemsize
        shapes = [tuple(input_shape), *self.output_shapes(tuple(input_shape))]
        return [batch_size * int(np.prod(shape)) * itemsize for shape in shapes]

    def memory_summary(
        self, input_shape: tuple[int, ...], batch_size: int, *, print_fn: Any = print
    ) -> str:
        """Table of ``training_memory`` in MiB with the step's estimated total; printed and
        returned. Total = kept + workspaces + parameters and gradients + the largest
        transient pair (a layer's output y and the dx its backward returns)."""
        rows = self.training_memory(input_shape, batch_size)
        sizes = self._activation_bytes(input_shape, batch_size)
        itemsize = np.dtype(self.dtype or np.float32).itemsize
        transient = max(a + b for a, b in zip(sizes, sizes[1:])) if len(sizes) > 1 else 0
        parameters = 2 * self.num_parameters() * itemsize
        mib = 2.0**20
        width = max([len(name) for name, _, _ in rows] + [5])
        lines = [f"training memory, batch {batch_size} (MiB):"]
        lines.append(f"  {'#':>2}  {'layer':<{width}}  {'kept':>9}  {'workspace':>9}")
        for index, (name, kept, workspace) in enumerate(rows):
            cells = f"{kept / mib:9.1f}  {workspace / mib:9.1f}"
            lines.append(f"  {index:>2}  {name:<{width}}  {cells}")
        kept_total = sum(kept for _, kept, _ in rows)
        workspace_total = sum(workspace for _, _, workspace in rows)
        lines.append(f"  activations kept for backward {kept_total / mib:9.1f}")
        lines.append(f"  workspaces                    {workspace_total / mib:9.1f}")
        lines.append(f"  parameters + gradients        {parameters / mib:9.1f}")
        lines.append(f"  largest layer's y + dx        {transient / mib:9.1f}")
        total = kept_total + workspace_total + parameters + transient
        lines.append(f"  estimated total               {total / mib:9.1f}")
        text = "\n".join(lines)
        if print_fn is not None:
            print_fn(text)
        return text

    # -- Keras-style conveniences: thin wrappers over convnp.train, convnp.data and convnp.io --
    def compile(
        self, loss: Any = None, optimizer: Any = None, *, lr: float | None = None
    ) -> Sequential:
        """Choose the loss and optimizer that ``fit``, ``evaluate`` and ``predict_proba`` use.

        ``loss``: a loss object or a name, "cross_entropy" (logits), "squared_error"
        (sigmoid outputs, SPEC §1) or "rbf" (Euclidean RBF energies). Left None, it
        follows the output layer: squared error after a Sigmoid, the RBF energy loss after
        an EuclideanRBF, cross-entropy otherwise. ``optimizer``: an Optimizer over
        ``self.parameters()`` or a name, "adam" (lr 1e-3) or "sgd" (lr 0.01); left None,
        ``fit`` uses Adam with lr 1e-3 (Keras's default). ``fit`` calls ``compile()``
        itself if it was never called. Returns the model.
        """
        from convnp import losses, optim

        if loss is None:
            output = type(self.layers[-1]).__name__ if self.layers else ""
            loss = {"Sigmoid": "squared_error", "EuclideanRBF": "rbf"}.get(output, "cross_entropy")
        if isinstance(loss, str):
            if loss not in losses.LOSSES:
                raise ValueError(
                    f"compile: unknown loss {loss!r}; known: {', '.join(losses.LOSSES)}"
                )
            loss = losses.LOSSES[loss]()
        if isinstance(optimizer, str):
            makers = {"adam": (optim.Adam, 1e-3), "sgd": (optim.SGD, 0.01)}
            if optimizer not in makers:
                raise ValueError(f"compile: unknown optimizer {optimizer!r}; known: adam, sgd")
            maker, default_lr = makers[optimizer]
            optimizer = maker(self.parameters(), lr=default_lr if lr is None else lr)
        elif optimizer is not None and lr is not None:
            optimizer.lr = lr
        self.loss, self.optimizer = loss, optimizer
        return self

    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        *,
        epochs: int = 1,
        batch_size: int = 32,
        validation_split: float = 0.0,
        shuffle: bool = True,
        seed: int = 0,
        verbose: bool = True,
    ) -> list[dict[str, Any]]:
        """Train on arrays: images x (N, C, *spatial) and integer labels y (N,).

        uint8 images are scaled to [0, 1] (``DataLoader``'s "unit"), float images are used
        as given; ``evaluate`` and ``predict_proba`` treat their input the same way. As in
        Keras, ``validation_split`` holds out the *last* fraction of the arrays (before
        shuffling; shuffle data sorted by class first) and reports val_loss/val_accuracy per
        epoch. Uses the loss and optimizer of
        ``compile`` (its defaults if never called) and ``convnp.train.fit``; returns its
        per-epoch history.
        """
        from convnp import train
        from convnp.data import DataLoader

        if not 0.0 <= validation_split < 1.0:
            raise ValueError(f"fit: validation_split must be in [0, 1), got {validation_split}")
        x, y = np.asarray(x), np.asarray(y)
        held_out = int(round(len(x) * validation_split))
        if held_out == len(x) and held_out:
            raise ValueError(f"fit: validation_split {validation_split} leaves no training data")
        if self.optimizer is None:
            self.compile(self.loss, "adam")
        options = {"normalize": _array_normalize(x), "dtype": self.dtype or np.float32}
        kept = len(x) - held_out
        batches = DataLoader(x[:kept], y[:kept], batch_size, shuffle=shuffle, seed=seed, **options)
        val = DataLoader(x[kept:], y[kept:], 1000, shuffle=False, **options) if held_out else None
        self.input_shape = tuple(int(size) for size in x.shape[1:])
        return train.fit(
            self, self.loss, self.optimizer, batches, epochs=epochs, val=val, progress=verbose
        )

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        """Loss, accuracy and confusion matrix on arrays (``convnp.train.evaluate``), with the
        compiled loss (``compile()``'s default if none was chosen)."""
        from convnp import train

        if self.loss is None:
            self.compile()
        return train.evaluate(self, self._array_batches(x, y), self.loss)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Per-class scores (N, classes) as ``convnp predict`` reports them: softmax of the
        logits, softmax of minus the RBF energies, or a squared-error net's sigmoid outputs."""
        from convnp import train

        outputs = self._array_outputs(x)
        return train.output_scores(_loss_kind(self.loss), outputs)[0]

    def predict_classes(self, x: np.ndarray) -> np.ndarray:
        """The decided class per input: argmax, or argmin of RBF energies (the loss's rule)."""
        from convnp import train

        outputs = self._array_outputs(x)
        return train.predicted_classes(self.loss, outputs)

    def _array_outputs(self, x: np.ndarray) -> np.ndarray:
        """Eval-mode outputs for array input scaled as ``fit`` scales it; compiles the
        default loss first if none was chosen (the callers read it)."""
        if self.loss is None:
            self.compile()
        return np.concatenate([self.predict(xb) for xb, _ in self._array_batches(x)])

    def save(self, path: Any) -> None:
        """Write a model file (``convnp.io.save``) that ``convnp.load`` and the ``convnp``
        command read: weights, architecture, input shape, loss and input scaling (raw 0-255
        pixels divided by 255, as ``fit`` treats uint8 images; ``convnp predict`` and
        ``convnp export`` apply it)."""
        from convnp import io

        info: dict[str, Any] = {"normalize": {"kind": "unit", "mean": None, "std": None}}
        if self.input_shape is not None:
            info["input_shape"] = list(self.input_shape)
        if self.loss is not None:
            info["loss"] = _loss_kind(self.loss)
        io.save(self, path, info)

    def _known_input_shape(self, caller: str) -> tuple[int, ...]:
        if self.input_shape is None:
            raise ValueError(
                f"{caller}: the model does not know its input shape yet; pass one, e.g. "
                f"{caller}((1, 28, 28)), or call fit() first"
            )
        return self.input_shape

    def _array_batches(self, x: np.ndarray, y: np.ndarray | None = None) -> Any:
        from convnp.data import DataLoader

        x = np.asarray(x)
        labels = np.zeros(len(x), dtype=np.int64) if y is None else np.asarray(y)
        return DataLoader(
            x, labels, 1000, shuffle=False, normalize=_array_normalize(x),
            dtype=self.dtype or np.float32,
        )  # fmt: skip


def _array_normalize(x: np.ndarray) -> str | None:
    """The scaling ``Sequential.fit``/``predict`` apply: uint8 to [0, 1], floats as given."""
    return "unit" if x.dtype == np.uint8 else None


def _loss_kind(loss: Any) -> str:
    from convnp import losses

    for name, cls in losses.LOSSES.items():
        if type(loss) is cls:
            return name
    raise ValueError(f"{type(loss).__name__} is not one of the named losses {list(losses.LOSSES)}")
