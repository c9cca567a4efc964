"""The task model: a small classifier that names the digit from the glimpses taken so far.

AdaGlimpse's task model (arXiv 2404.03482) is a vision transformer whose tokens are glimpse patches.
Because a glimpse can sit anywhere at any scale, a token's position is its *box*: each of the four box edges
(top, left, bottom, right) is encoded with a fixed 1-D sine-cosine code of ``D/4`` dimensions and the four codes
are concatenated into a ``D``-dimensional code that is added to the patch embedding (the "2D+" code the paper
takes from ElasticViT). The class is read from a pooled summary of the tokens.

Ours is the same model at toy size:

* **patch embedding:** each ``G x G`` reading is standardised (batch norm) and a two-layer CNN maps it to a
  ``d_model`` vector (one token per glimpse; the paper cuts each glimpse into ``g x g`` patches of 16 px);
* **2D+ box code:** box edges in units of ``glimpse_size`` pixels (the paper divides by its 16 px patch), sine and
  cosine at ``d_model / 8`` geometric frequencies;
* **attention pooling:** a learned query attends to the tokens, plus a learned *null* token so that the model has
  something to read before the first glimpse. Masking keys after glimpse ``t`` gives the belief after 0, 1, ..., T
  glimpses in one pass, and the belief does not depend on the order in which the glimpses were taken.

It is trained before any reinforcement learning, on episodes of glimpses drawn at random, and then frozen, as in
the paper's first training phase (the paper pre-trains its ViT on random glimpses, then trains the agent with the
backbone frozen). At our scale a uniformly random glimpse rarely frames the digit, so a share of the training
glimpses is drawn *around* the digit (its box always contains it); without them the model never learns what a
sharp digit looks like and the agent's reward would be noise.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import safetensors.torch
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import Tensor, nn

from efflab.cache import atomic_write, cached
from efflab.data.canvas import Canvases
from efflab.data.digits import N_CLASSES
from efflab.glimpse.sensor import Sensor
from efflab.results import check_name, read_beside, write_beside
from efflab.runtime import Run
from efflab.train import TrainConfig, fit
from efflab.validation import check_fraction, check_int, check_positive, check_seed

DIGIT_SIZE = 8  # the canvases' digits are scikit-learn's 8x8 images


def box_code(boxes: Tensor, dim: int, unit: float) -> Tensor:
    """The 2D+ code (..., dim) of boxes (..., 3) = (top, left, side): the four edges' sin-cos codes, concatenated.

    Each edge, measured in ``unit`` pixels, gets ``dim / 4`` numbers: ``sin(w_k e)`` and ``cos(w_k e)`` at
    frequencies ``w_k = 100^(-k / n)``, k = 0..n-1, n = dim / 8 (a short coordinate range needs a smaller base than
    the 10,000 of text transformers).
    """
    check_int("dim", dim, low=8)
    if dim % 8:
        raise ValueError(f"dim={dim!r} is not allowed; expected a multiple of 8 (four edges, sine and cosine)")
    check_positive("unit", unit)
    if not isinstance(boxes, Tensor) or boxes.ndim == 0 or boxes.shape[-1] != 3:
        raise ValueError("boxes is not allowed; expected a tensor (..., 3) = (top, left, side)")
    top, left, side = boxes.float().unbind(-1)
    edges = torch.stack([top, left, top + side, left + side], dim=-1) / unit  # (..., 4)
    n = dim // 8
    frequencies = 100.0 ** (-torch.arange(n, device=boxes.device) / n)
    angles = edges[..., None] * frequencies  # (..., 4, n)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)


@dataclass(frozen=True)
class TaskModelConfig:
    glimpse_size: int = 8
    d_model: int = 64
    n_heads: int = 4
    channels: tuple[int, int] = (16, 32)

    def __post_init__(self):
        check_int("glimpse_size", self.glimpse_size, low=4)
        check_int("d_model", self.d_model, low=8)
        check_int("n_heads", self.n_heads, low=1)
        if self.d_model % 8 or self.d_model % self.n_heads:
            raise ValueError(
                f"d_model={self.d_model!r} is not allowed; expected a multiple of 8 and of n_heads={self.n_heads}"
            )
        if not isinstance(self.channels, tuple) or len(self.channels) != 2:
            raise ValueError(
                f"channels={self.channels!r} is not allowed; expected two conv widths (first, second)"
            )
        for width in self.channels:
            check_int("channels", width, low=1)


class GlimpseClassifier(nn.Module):
    """Glimpse tokens -> beliefs. ``forward(readings (B, T, G, G), boxes (B, T, 3))`` returns logits
    (B, T + 1, 10): entry ``t`` is the prediction after the first ``t`` glimpses (entry 0: before any)."""

    def __init__(self, config: TaskModelConfig):
        super().__init__()
        if not isinstance(config, TaskModelConfig):
            raise ValueError(f"config={config!r} is not allowed; expected a TaskModelConfig")
        self.config = config
        first, second = config.channels
        side = config.glimpse_size // 4
        self.embed = nn.Sequential(
            nn.BatchNorm2d(1),  # standardise the readings: most pixels of a cluttered canvas are black
            nn.Conv2d(1, first, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(first, second, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(second * side * side, config.d_model),
        )
        self.null_token = nn.Parameter(torch.zeros(1, 1, config.d_model))
        self.query = nn.Parameter(torch.randn(1, 1, config.d_model) * 0.02)
        self.pool = nn.MultiheadAttention(config.d_model, config.n_heads, batch_first=True)
        self.norm = nn.LayerNorm(config.d_model)
        self.head = nn.Sequential(
            nn.Linear(config.d_model, config.d_model), nn.GELU(), nn.Linear(config.d_model, N_CLASSES)
        )

    def tokens(self, readings: Tensor, boxes: Tensor) -> Tensor:
        """Token per glimpse: patch embedding of the reading plus the 2D+ code of its box, (B, T, d_model)."""
        n, steps, size, _ = readings.shape
        embedded = self.embed(readings.reshape(n * steps, 1, size, size)).reshape(n, steps, self.config.d_model)
        return embedded + box_code(boxes, self.config.d_model, unit=self.config.glimpse_size)

    def forward(self, readings: Tensor, boxes: Tensor) -> Tensor:
        size = self.config.glimpse_size
        if readings.ndim != 4 or readings.shape[2:] != (size, size):
            raise ValueError(
                f"readings with shape {tuple(readings.shape)} are not allowed; expected (B, T, {size}, {size})"
            )
        if boxes.shape != (*readings.shape[:2], 3):
            raise ValueError(
                f"boxes with shape {tuple(boxes.shape)} are not allowed; expected {(*readings.shape[:2], 3)}"
            )
        n, steps = boxes.shape[:2]
        keys = torch.cat([self.null_token.expand(n, 1, -1), self.tokens(readings, boxes)], dim=1)
        queries = self.query.expand(n, steps + 1, -1)
        # Query t may look at the null token and glimpses 1..t: True marks a key it must not see.
        later = torch.triu(torch.ones(steps + 1, steps + 1, dtype=torch.bool, device=keys.device), diagonal=1)
        pooled, _ = self.pool(queries, keys, keys, attn_mask=later, need_weights=False)
        return self.head(self.norm(pooled))


def check_positions(positions, sensor: Sensor) -> None:
    """Digit corners (B, 2): integers that keep the whole 8 px digit on the sensor's canvas."""
    integral = isinstance(positions, Tensor) and not (
        positions.is_floating_point() or positions.dtype == torch.bool
    )
    if not integral or positions.ndim != 2 or positions.shape[1] != 2:
        raise ValueError("positions is not allowed; expected integer digit corners (B, 2) = (row, col)")
    if ((positions < 0) | (positions > sensor.canvas_size - DIGIT_SIZE)).any():
        raise ValueError(f"positions is not allowed: expected corners in [0, {sensor.canvas_size - DIGIT_SIZE}]")


def check_mixture(around_digit, whole_scene) -> None:
    """The shares of task-model glimpses around the digit and of the whole scene: fractions with a sum <= 1."""
    check_fraction("around_digit", around_digit, inclusive=True)
    check_fraction("whole_scene", whole_scene, inclusive=True)
    if around_digit + whole_scene > 1:
        raise ValueError(
            f"around_digit + whole_scene = {around_digit + whole_scene!r} is not allowed; expected at most 1"
        )


def digit_boxes(positions: Tensor, sensor: Sensor, generator: torch.Generator, *, max_side: int) -> Tensor:
    """Random boxes (B, 3) that contain the whole digit whose top-left corner is ``positions`` (B, 2).

    The side is uniform in ``[max(min_side, 8), max_side]``, the offset uniform among the boxes that still hold
    the digit and lie on the canvas (``max_side`` is capped at the canvas).
    """
    check_positions(positions, sensor)
    check_int("max_side", max_side, low=1)
    n = len(positions)
    low = max(sensor.min_side, DIGIT_SIZE)
    side = torch.randint(low, min(max(low, max_side), sensor.canvas_size) + 1, (n,), generator=generator)
    slack = side - DIGIT_SIZE
    room = sensor.canvas_size - side
    corner = positions - (torch.rand(n, 2, generator=generator) * (slack[:, None] + 1)).long()
    corner = torch.minimum(corner.clamp(min=0), room[:, None])
    return torch.cat([corner, side[:, None]], dim=1)


def training_boxes(
    positions: Tensor, sensor: Sensor, generator: torch.Generator, *, around_digit: float, whole_scene: float
) -> Tensor:
    """One glimpse per scene for task-model training: around the digit with probability ``around_digit``, the
    whole scene with probability ``whole_scene``, otherwise uniformly random coordinates."""
    check_mixture(around_digit, whole_scene)
    n = len(positions)
    choice = torch.rand(n, generator=generator)[:, None]
    uniform = sensor.boxes(torch.rand(n, 3, generator=generator, dtype=torch.float64))
    near = digit_boxes(positions, sensor, generator, max_side=2 * DIGIT_SIZE)
    whole = sensor.whole_scene(n)
    return torch.where(
        choice < around_digit, near, torch.where(choice < around_digit + whole_scene, whole, uniform)
    )


@dataclass(frozen=True)
class TaskModelBudget:
    """How the task model is trained; :meth:`for_run` picks quick or full."""

    steps: int
    batch_size: int
    glimpses: int
    lr: float = 3e-3
    around_digit: float = 0.4
    whole_scene: float = 0.2

    def __post_init__(self):
        check_int("steps", self.steps, low=1)
        check_int("batch_size", self.batch_size, low=1)
        check_int("glimpses", self.glimpses, low=1)
        check_positive("lr", self.lr)
        check_mixture(self.around_digit, self.whole_scene)

    @classmethod
    def quick(cls) -> TaskModelBudget:
        """1,600 steps of 128 episodes at a higher learning rate: about 15 s on an idle core. The agent can only
        be as good as the rewards this model gives: trained on an eighth of twice these glimpses (800 steps of
        64), the same SAC budget reached 0.50 held-out accuracy instead of 0.69."""
        return cls(steps=1600, batch_size=128, glimpses=3, lr=4e-3)

    @classmethod
    def full(cls) -> TaskModelBudget:
        return cls(steps=6000, batch_size=256, glimpses=4)

    @classmethod
    def for_run(cls, run: Run) -> TaskModelBudget:
        return cls.quick() if run.quick else cls.full()


def random_episodes(
    scenes: Canvases, sensor: Sensor, budget: TaskModelBudget, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """A training batch: readings (B, T, G, G) and a target (B, 1 + 3T): the label, then the T boxes, flattened."""
    check_training(scenes, sensor, budget)
    chosen = torch.randint(0, len(scenes), (budget.batch_size,), generator=generator)
    canvases, positions = scenes.x[chosen], scenes.positions[chosen]
    boxes = torch.stack(
        [
            training_boxes(
                positions, sensor, generator, around_digit=budget.around_digit, whole_scene=budget.whole_scene
            )
            for _ in range(budget.glimpses)
        ],
        dim=1,
    )
    readings = torch.stack([sensor.read(canvases, boxes[:, t]) for t in range(budget.glimpses)], dim=1)
    return readings, torch.cat([scenes.y[chosen, None], boxes.flatten(1)], dim=1)


def check_training(scenes: Canvases, sensor: Sensor, budget: TaskModelBudget) -> None:
    """Task-model training needs Canvases at the sensor's size (their pixels are checked when they are made)."""
    if not isinstance(sensor, Sensor):
        raise ValueError(f"sensor={sensor!r} is not allowed; expected a Sensor")
    if not isinstance(scenes, Canvases) or scenes.x.shape[-1] != sensor.canvas_size or len(scenes) == 0:
        raise ValueError(
            f"scenes are not allowed; expected Canvases of {sensor.canvas_size} px, the sensor's size"
        )
    if not isinstance(budget, TaskModelBudget):
        raise ValueError(f"budget={budget!r} is not allowed; expected a TaskModelBudget")


def check_task_config(config: TaskModelConfig, sensor: Sensor) -> None:
    if not isinstance(config, TaskModelConfig) or config.glimpse_size != sensor.glimpse_size:
        raise ValueError(
            f"config={config!r} is not allowed; expected a TaskModelConfig with glimpse_size={sensor.glimpse_size}"
        )


def episode_loss(model: GlimpseClassifier, readings: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy of the beliefs after 1, 2, ..., T glimpses, averaged: every step of an episode counts."""
    labels, boxes = target[:, 0], target[:, 1:].reshape(len(target), -1, 3)
    logits = model(readings, boxes)[:, 1:]
    return F.cross_entropy(logits.reshape(-1, N_CLASSES), labels.repeat_interleave(logits.shape[1]))


def train_task_model(
    scenes: Canvases,
    sensor: Sensor,
    budget: TaskModelBudget,
    *,
    config: TaskModelConfig | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool | None = None,
) -> tuple[GlimpseClassifier, pd.DataFrame]:
    """Train a fresh :class:`GlimpseClassifier` on random glimpse episodes of ``scenes``; return it frozen
    (eval mode, no gradients) with its training history."""
    check_training(scenes, sensor, budget)
    config = TaskModelConfig(glimpse_size=sensor.glimpse_size) if config is None else config
    check_task_config(config, sensor)
    check_seed(seed)
    torch.manual_seed(seed)
    model = GlimpseClassifier(config).to(device)
    generator = torch.Generator().manual_seed(seed)
    history = fit(
        model,
        lambda: random_episodes(scenes, sensor, budget, generator),
        TrainConfig(steps=budget.steps, lr=budget.lr, warmup_steps=budget.steps // 20, weight_decay=0.01),
        loss_fn=episode_loss,
        progress=progress,
        description="task model",
    )
    return freeze(model), history


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model


def cached_task_model(
    scenes: Canvases,
    sensor: Sensor,
    budget: TaskModelBudget,
    *,
    scene_key: dict,
    config: TaskModelConfig | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool | None = None,
) -> tuple[GlimpseClassifier, pd.DataFrame]:
    """:func:`train_task_model`, cached under ``data/cache`` by everything that determines the result.

    ``scene_key`` describes how ``scenes`` were made (e.g. ``asdict(SceneConfig)``); the cache cannot hash the
    canvases themselves cheaply, so the caller names them. ``history.attrs`` says how long training took and
    whether this call loaded the model from the cache.
    """
    check_training(scenes, sensor, budget)
    config = TaskModelConfig(glimpse_size=sensor.glimpse_size) if config is None else config
    check_task_config(config, sensor)
    check_seed(seed)
    key = {"scenes": scene_key, "sensor": asdict(sensor), "budget": asdict(budget), "model": asdict(config)}
    key["seed"] = seed

    trained_now = []

    def build():
        trained_now.append(True)
        model, history = train_task_model(
            scenes, sensor, budget, config=config, seed=seed, device=device, progress=progress
        )
        state = {name: tensor.cpu() for name, tensor in model.state_dict().items()}
        return {
            "state": state,
            "loss": torch.tensor(history.loss.to_numpy()),
            "seconds": torch.tensor(float(history.seconds.max())),
        }

    entry = cached("glimpse_task_model", key, build)
    model = GlimpseClassifier(config)
    model.load_state_dict(entry["state"])
    loss = entry["loss"].numpy()
    history = pd.DataFrame({"step": range(1, len(loss) + 1), "loss": loss})
    history.attrs["train_seconds"] = float(entry["seconds"])
    history.attrs["source"] = "trained now" if trained_now else "loaded from the cache"
    return freeze(model.to(device)), history


TASK_MODEL_SUFFIX = "_task_model"


def save_task_model(
    model: GlimpseClassifier,
    history: pd.DataFrame,
    directory,
    name: str,
    *,
    metadata: dict,
    run: Run | None = None,
) -> Path:
    """Write ``<directory>/<name>_task_model.safetensors`` and a JSON beside it (what it was trained for, its
    config, its loss curve and where it came from), each atomically.

    ``metadata`` names the game it reads (scenes, sensor, glimpses); :func:`load_task_model` refuses a model
    saved for another.
    """
    check_name(name)
    if not isinstance(model, GlimpseClassifier):
        raise ValueError(f"model of type {type(model).__name__} is not allowed; expected a GlimpseClassifier")
    if not isinstance(history, pd.DataFrame) or "loss" not in history:
        raise ValueError("history is not allowed; expected the DataFrame (step, loss) training returned")
    path = Path(directory) / f"{name}{TASK_MODEL_SUFFIX}.safetensors"
    state = {key: tensor.detach().cpu().contiguous() for key, tensor in model.state_dict().items()}
    atomic_write(path, lambda handle: handle.write(safetensors.torch.save(state)))
    extra = {"config": asdict(model.config), "loss": history["loss"].tolist()}
    write_beside(path, metadata, run, train_seconds=float(history.attrs.get("train_seconds", math.nan)), **extra)
    return path


def load_task_model(directory, name: str, *, expected: dict) -> tuple[GlimpseClassifier, pd.DataFrame] | None:
    """The saved task model (frozen) and its training history, or None when ``directory`` holds none.

    A model whose JSON disagrees with ``expected`` on any key, or whose files cannot be read, raises a ValueError.
    ``history.attrs`` holds the training seconds and the provenance of the run that trained it.
    """
    check_name(name)
    path = Path(directory) / f"{name}{TASK_MODEL_SUFFIX}.safetensors"
    if not path.exists():
        return None
    info = read_beside(path, expected)
    try:
        config = TaskModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in info["config"].items()})
        model = GlimpseClassifier(config)
        model.load_state_dict(safetensors.torch.load_file(path))
        loss = [math.nan if value is None else value for value in info["loss"]]
    except (KeyError, TypeError, AttributeError, ValueError, RuntimeError, OSError, SafetensorError) as error:
        message = f"the task model saved at {path} cannot be loaded ({error!r}); delete or regenerate it"
        raise ValueError(message) from error
    history = pd.DataFrame({"step": range(1, len(loss) + 1), "loss": loss})
    history.attrs.update(train_seconds=info.get("train_seconds"), provenance=info["provenance"])
    history.attrs["source"] = "read from the committed full-mode run"
    return freeze(model), history


def beliefs(model: GlimpseClassifier, readings: Tensor, boxes: Tensor, *, chunk: int = 2048) -> Tensor:
    """Class probabilities (B, T + 1, 10) after 0..T glimpses, computed in chunks without gradients."""
    check_int("chunk", chunk, low=1)
    device = next(model.parameters()).device
    parts = []
    with torch.no_grad():
        for start in range(0, len(readings), chunk):
            logits = model(readings[start : start + chunk].to(device), boxes[start : start + chunk].to(device))
            parts.append(logits.softmax(-1).cpu())
    return torch.cat(parts)


def ideal_boxes(positions: Tensor, sensor: Sensor, side: int | None = None) -> Tensor:
    """Boxes of ``side`` (default: the sharpest that holds a digit, ``max(min_side, 8)``) centred on the digits
    whose corners are ``positions`` (B, 2), moved onto the canvas where they would stick out."""
    check_positions(positions, sensor)
    side = max(sensor.min_side, DIGIT_SIZE) if side is None else side
    check_int("side", side, low=sensor.min_side, high=sensor.max_side)
    margin = (side - DIGIT_SIZE) // 2
    corner = (positions - margin).clamp(min=0, max=sensor.canvas_size - side)
    return torch.cat([corner, torch.full((len(positions), 1), side)], dim=1)
