"""A scikit-learn classifier around convnp: ``ConvNetClassifier``.

It follows scikit-learn's estimator contract (parameters stored untouched by ``__init__``,
``fit`` returns self, fitted state in attributes ending in "_"), so it works with
``clone``, ``Pipeline``, ``cross_val_score`` and ``GridSearchCV``. Training is
``convnp.train.fit`` with a ``convnp.app.zoo`` recipe's loss, optimizer and defaults; there is
no second training loop here.

Needs scikit-learn >= 1.6 (``pip install 'convnp[sklearn]'``); importing this module
without it raises an ImportError that says so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as error:  # pragma: no cover - exercised only without scikit-learn
    raise ImportError(
        "convnp.interop.sklearn needs scikit-learn >= 1.6: pip install 'convnp[sklearn]'"
    ) from error

from convnp import train
from convnp.app import architectures, zoo
from convnp.data import DataLoader, channel_stats
from convnp.model import Sequential
from convnp.optim import Optimizer
from convnp.runtime.parallel import predict_in_blocks

Architecture = str | Callable[..., Sequential]
_NO_TARGET = "no_validation"  # scikit-learn's marker for "validate X only"


class ConvNetClassifier(ClassifierMixin, BaseEstimator):
    """A convnp network as a scikit-learn classifier.

    Args:
        model: a built-in recipe name (``convnp.app.zoo.RECIPES``: loss, optimizer, lr, batch
            size and epochs come from it), an architecture string in
            ``convnp.app.architectures`` notation (e.g. "32c3p1-relu-2m-64f-relu"; trained like
            the "modern" recipe, or with squared error if its output is a sigmoid), or a
            function ``(input_shape, num_classes, *, dtype, rng) -> Sequential``.
        epochs: passes over the data in ``fit`` (None: the recipe's).
        batch_size: mini-batch size (None: the recipe's).
        lr: learning rate (None: the recipe's).
        image_shape: how to read flat (N, F) input: (H, W) or (C, H, W). None reads it as
            a 1×F image (1 channel), which suits dense architectures such as "64f-relu".
            (N, H, W) input is read as one channel, (N, C, H, W) as is.
        normalize: "standardize" (per channel, statistics of the data given to ``fit``, or to
            the first ``partial_fit``; for any recipe, as X may be in any units) or None
            (use X as given).
        dtype: float dtype of the network.
        random_state: int, RandomState or None: initial weights and batch order.
        verbose: show convnp's per-epoch progress.

    Attributes:
        classes_: the labels seen in ``fit``, sorted; output unit k is ``classes_[k]``.
        model_: the trained ``convnp.Sequential``. loss_, optimizer_: as used to train it.
        input_shape_: (C, H, W) of one image. mean_, std_: per-channel statistics.
        history_: per-epoch records from ``convnp.train.fit``.
    """

    def __init__(
        self,
        model: Architecture = "modern",
        *,
        epochs: int | None = None,
        batch_size: int | None = None,
        lr: float | None = None,
        image_shape: tuple[int, ...] | None = None,
        normalize: str | None = "standardize",
        dtype: Any = np.float32,
        random_state: Any = None,
        verbose: bool = False,
    ) -> None:
        self.model = model
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.image_shape = image_shape
        self.normalize = normalize
        self.dtype = dtype
        self.random_state = random_state
        self.verbose = verbose

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True  # (N, H, W) and (N, C, H, W) images
        return tags

    # -- training -------------------------------------------------------------------------
    def fit(self, X: Any, y: Any) -> ConvNetClassifier:
        """Build a fresh network for the classes in ``y`` and train it for ``epochs``."""
        images, y = self._validated(X, y, reset=True)
        check_classification_targets(y)
        self._start(images, np.unique(y))
        self._train(images, y, self._recipe().epochs if self.epochs is None else self.epochs)
        return self

    def partial_fit(self, X: Any, y: Any, classes: Any = None) -> ConvNetClassifier:
        """One epoch over (X, y), continuing from the current weights and optimizer state.

        ``classes`` (every label that will ever occur) is required on the first call.
        """
        first = not hasattr(self, "model_")
        images, y = self._validated(X, y, reset=first)
        check_classification_targets(y)
        if first:
            if classes is None:
                raise ValueError(
                    "ConvNetClassifier.partial_fit: pass classes=... (every label) on the "
                    "first call"
                )
            self._start(images, np.unique(classes))
        elif classes is not None and not np.array_equal(np.unique(classes), self.classes_):
            raise ValueError(
                f"ConvNetClassifier.partial_fit: classes {np.unique(classes)} differ from "
                f"the first call's {self.classes_}"
            )
        self._train(images, y, 1)
        return self

    def _recipe(self) -> zoo.Recipe:
        if callable(self.model) or self.model not in zoo.RECIPES:
            return zoo.RECIPES["modern"]  # training settings for a custom architecture
        return zoo.get_recipe(self.model)

    def _start(self, images: np.ndarray, classes: np.ndarray) -> None:
        """Fix the classes, input shape and normalisation; build the network and optimizer."""
        if len(classes) < 2:
            raise ValueError(
                f"ConvNetClassifier: y has one class only ({classes}); a classifier needs "
                "at least two classes"
            )
        if self.normalize not in ("standardize", None):
            raise ValueError(
                f"ConvNetClassifier: normalize must be 'standardize' or None, "
                f"got {self.normalize!r}"
            )
        self.classes_ = classes
        self.input_shape_ = tuple(images.shape[1:])
        self.mean_, self.std_ = None, None
        if self.normalize == "standardize":
            self.mean_, std = channel_stats(images)
            self.std_ = np.where(std > 0, std, 1.0)  # a constant channel is only shifted
        self._rng = np.random.default_rng(check_random_state(self.random_state).randint(2**31))
        recipe = self._recipe()
        self.model_ = self._build(recipe)
        self._loss_kind = self._choose_loss(recipe)
        self.loss_ = zoo.make_loss(self._loss_kind)
        self.optimizer_ = self._optimizer(recipe)
        self.history_ = []

    def _build(self, recipe: zoo.Recipe) -> Sequential:
        shape, classes = self.input_shape_, len(self.classes_)
        try:
            if callable(self.model):
                return self.model(shape, classes, dtype=self.dtype, rng=self._rng)
            if self.model in zoo.RECIPES:
                return recipe.build(shape, classes, dtype=self.dtype, rng=self._rng)
            return architectures.from_string(
                self.model, shape, classes, dtype=self.dtype, rng=self._rng
            )
        except ValueError as error:
            raise ValueError(
                f"ConvNetClassifier: model {self.model!r} cannot take images of shape {shape} "
                f"({str(error).splitlines()[0]}); give flat (N, H*W) data an image_shape, "
                "or use a dense architecture such as model='64f-relu'"
            ) from None

    def _choose_loss(self, recipe: zoo.Recipe) -> str:
        """The recipe's loss; for an architecture string, what ``convnp train --arch`` uses:
        squared error after a sigmoid output (the classic notation), else cross-entropy."""
        if callable(self.model) or self.model in zoo.RECIPES:
            kind = recipe.loss
        else:
            kind = (
                "squared_error" if type(self.model_[-1]).__name__ == "Sigmoid" else "cross_entropy"
            )
        if kind not in zoo.LOSSES:
            raise ValueError(f"ConvNetClassifier: recipe loss {kind!r} is not supported")
        return kind

    def _optimizer(self, recipe: zoo.Recipe) -> Optimizer:
        return recipe.make_optimizer(self.model_, lr=self.lr)

    def _loader(self, images: np.ndarray, labels: np.ndarray, **options: Any) -> DataLoader:
        standardize = self.normalize == "standardize"
        return DataLoader(
            images,
            labels,
            normalize="standardize" if standardize else None,
            mean=self.mean_,
            std=self.std_,
            dtype=self.dtype,
            **options,
        )

    def _train(self, images: np.ndarray, y: np.ndarray, epochs: int) -> None:
        unknown = ~np.isin(y, self.classes_)
        if unknown.any():
            raise ValueError(
                f"ConvNetClassifier: labels {np.unique(y[unknown])} are not among the "
                f"classes {self.classes_}"
            )
        batch_size = self.batch_size or self._recipe().batch_size
        loader = self._loader(
            images,
            np.searchsorted(self.classes_, y).astype(np.int64),  # label -> output unit
            batch_size=int(batch_size),
            shuffle=True,
            seed=int(self._rng.integers(2**63)),
        )
        records = train.fit(
            self.model_, self.loss_, self.optimizer_, loader, epochs=epochs, progress=self.verbose
        )
        self.history_.extend(records)

    # -- input ----------------------------------------------------------------------------
    def _validated(self, X: Any, y: Any = _NO_TARGET, *, reset: bool) -> Any:
        """scikit-learn's validation on the flat (N, C·H·W) view, so ``n_features_in_`` is
        the number of values per image whatever the layout; returns (N, C, H, W) images
        (and y, when given)."""
        if isinstance(X, (list, tuple)):
            X = np.asarray(X)
        layout = None
        if isinstance(X, np.ndarray) and X.ndim > 2:
            layout = X.shape[1:]
            X = X.reshape(len(X), -1)
        if y is _NO_TARGET:
            return self._images(validate_data(self, X, reset=reset), layout)
        X, y = validate_data(self, X, y, reset=reset)
        return self._images(X, layout), y

    def _images(self, X: np.ndarray, layout: tuple[int, ...] | None) -> np.ndarray:
        """(N, C, H, W) from flat X: (H, W) -> one channel, (C, H, W) as is; flat input is
        read per ``image_shape`` (see the class docstring)."""
        if layout is None:
            given = self.image_shape
            layout = (1, X.shape[1]) if given is None else tuple(given)
            if len(layout) not in (2, 3) or int(np.prod(layout)) != X.shape[1]:
                raise ValueError(
                    f"ConvNetClassifier: image_shape {given} does not hold {X.shape[1]} features"
                )
        elif len(layout) > 3:
            raise ValueError(
                f"ConvNetClassifier: expected 2-, 3- or 4-D X, got {len(layout) + 1}-D"
            )
        return X.reshape(len(X), *((1, *layout) if len(layout) == 2 else layout))

    # -- prediction -----------------------------------------------------------------------
    def _outputs(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        images = self._validated(X, reset=False)
        if images.shape[1:] != self.input_shape_:
            raise ValueError(
                f"ConvNetClassifier: images of shape {images.shape[1:]}, but the network was "
                f"fitted on {self.input_shape_}"
            )
        no_labels = np.zeros(len(images), np.int64)
        loader = self._loader(images, no_labels, batch_size=1000, shuffle=False, seed=0)
        parts = [predict_in_blocks(self.model_, x) for x, _ in loader]
        return np.concatenate(parts) if parts else np.empty((0, len(self.classes_)))

    def predict_proba(self, X: Any) -> np.ndarray:
        """(N, n_classes) class probabilities, columns in the order of ``classes_``: the
        trained loss's ``class_probabilities`` (softmax of logits, softmax of minus the RBF
        energies, or normalised sigmoid outputs for squared error; their argmax is the
        loss's decision)."""
        outputs = self._outputs(X).astype(np.float64)
        return self.loss_.class_probabilities(outputs)

    def predict(self, X: Any) -> np.ndarray:
        """The label of the class the trained loss decides for (argmax, or argmin for RBF)."""
        outputs = self._outputs(X)
        return self.classes_[train.predicted_classes(self.loss_, outputs)]
