"""The glimpse sensor: where a glimpse lands, what it reads, and the memory of everything read so far.

AdaGlimpse (Pardyl et al. 2024, arXiv 2404.03482) lets the agent choose a glimpse by three numbers
``(y, x, z)`` in [0, 1]. ``z`` sets the side of a square box, linearly between the smallest and the largest
allowed side, and ``y``, ``x`` slide that box between the image's top-left and bottom-right corners:

.. math::

    s = s_{min} + \\lfloor z\\,(s_{max} - s_{min}) \\rfloor, \\qquad
    y_0 = \\lfloor y\\,(H - s) \\rfloor, \\qquad x_0 = \\lfloor x\\,(W - s) \\rfloor .

Because the corner only ranges over ``[0, H - s]``, a glimpse always lies inside the image. Whatever its side,
the box is resized to the same ``G x G`` reading, so every glimpse costs the same ``G²`` pixels: a wide box is a
coarse, low-resolution look at much of the scene, a narrow one a sharp look at a little of it. ``z = 1`` is the
whole image shrunk to ``G x G``; ``z = 0`` (side ``G``) is a crop at native resolution.

The resize averages each output cell's area of the box (``F.interpolate(..., mode="area")``, i.e. adaptive
average pooling). Boxes differ in size within a batch, so one interpolate call cannot serve them all; but area
averaging is separable: a reading is ``R @ scene @ C.T``, where row ``i`` of the ``G x H`` matrix ``R`` averages
the scene rows of cell ``i``'s bin (and is zero elsewhere), and ``C`` does the same for columns. Building ``R``
and ``C`` for every box takes a few comparisons, and the whole batch is then two batched matrix products.

The paper's encoder keeps each glimpse as tokens with their boxes. Our cheap analogue is a *memory canvas* with
two channels at the scene's resolution: channel 0 holds what was read, each reading painted back over its box
(nearest-neighbour upsampling), channel 1 the resolution at which each pixel was seen, ``G / s`` (1 = native,
0 = never seen). Where glimpses overlap, the sharper view wins; at equal resolution, the later one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from efflab.validation import check_int

SEEN, RESOLUTION = 0, 1  # the memory's two channels


@dataclass(frozen=True)
class Sensor:
    """A square scene of ``canvas_size`` pixels seen through ``glimpse_size``-square readings.

    ``min_side`` (default ``glimpse_size``, so the sharpest glimpse is at native resolution) and ``max_side``
    (default ``canvas_size``, the whole scene) bound the side of a glimpse box; the paper uses
    ``s_min = 16 g`` and ``s_max = min(H, W)``.
    """

    canvas_size: int = 32
    glimpse_size: int = 8
    min_side: int | None = None
    max_side: int | None = None

    def __post_init__(self):
        check_int("glimpse_size", self.glimpse_size, low=1)
        check_int("canvas_size", self.canvas_size, low=self.glimpse_size)
        if self.min_side is None:
            object.__setattr__(self, "min_side", self.glimpse_size)
        if self.max_side is None:
            object.__setattr__(self, "max_side", self.canvas_size)
        check_int("min_side", self.min_side, low=self.glimpse_size, high=self.canvas_size)
        check_int("max_side", self.max_side, low=self.min_side, high=self.canvas_size)

    @property
    def pixels_per_glimpse(self) -> int:
        return self.glimpse_size**2

    def boxes(self, where: Tensor) -> Tensor:
        """Integer boxes (B, 3) = (top, left, side) for glimpse coordinates ``where`` (B, 3) = (y, x, z) in [0, 1].

        Coordinates outside [0, 1] raise a ValueError: silently clipping them would hide a bug in the caller.
        """
        where = torch.as_tensor(where, dtype=torch.float64)
        if where.ndim != 2 or where.shape[1] != 3:
            raise ValueError(f"where with shape {tuple(where.shape)} is not allowed; expected (B, 3) = (y, x, z)")
        if not torch.isfinite(where).all() or (where < 0).any() or (where > 1).any():
            raise ValueError("where is not allowed: expected every (y, x, z) coordinate in [0, 1]")
        y, x, z = where.unbind(1)
        side = self.min_side + torch.floor(z * (self.max_side - self.min_side)).long()
        room = self.canvas_size - side
        top = torch.floor(y * room).long().clamp(max=room)
        left = torch.floor(x * room).long().clamp(max=room)
        return torch.stack([top, left, side], dim=1)

    def whole_scene(self, n: int) -> Tensor:
        """``n`` copies (n, 3) of the largest box, at the top-left corner: with the default ``max_side``, the
        whole scene."""
        check_int("n", n, low=1)
        return torch.tensor([0, 0, self.max_side]).expand(n, 3)

    def where_for(self, boxes: Tensor) -> Tensor:
        """Coordinates (y, x, z) in [0, 1] that :meth:`boxes` maps back to exactly ``boxes`` (B, 3).

        Scripted policies think in pixels (a box around the digit); this turns their boxes into actions. Each
        coordinate aims at the middle of the interval that floors to the wanted integer, so rounding cannot move
        the box.
        """
        boxes = torch.as_tensor(boxes)
        self.check_boxes(boxes)
        top, left, side = boxes.unbind(1)
        if (side < self.min_side).any() or (side > self.max_side).any():
            raise ValueError(f"boxes is not allowed: expected sides in [{self.min_side}, {self.max_side}]")
        room = self.canvas_size - side
        span = max(self.max_side - self.min_side, 1)
        z = ((side - self.min_side).double() + 0.5) / span
        z = torch.where(side == self.max_side, torch.ones_like(z), z)
        safe_room = room.clamp(min=1).double()
        y = torch.where(room > 0, (top.double() + 0.5) / safe_room, torch.zeros_like(z)).clamp(max=1)
        x = torch.where(room > 0, (left.double() + 0.5) / safe_room, torch.zeros_like(z)).clamp(max=1)
        return torch.stack([y, x, z.clamp(max=1)], dim=1)

    def check_boxes(self, boxes, count: int | None = None, name: str = "boxes") -> None:
        """Raise a ValueError unless ``boxes`` is an integer tensor (B, 3) = (top, left, side), ``count`` rows when
        given, of boxes with a side >= 1 that lie inside the canvas."""
        integral = isinstance(boxes, Tensor) and not (boxes.is_floating_point() or boxes.dtype == torch.bool)
        if not integral or boxes.ndim != 2 or boxes.shape[1] != 3 or (count is not None and len(boxes) != count):
            shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
            rows = "B" if count is None else count
            raise ValueError(f"{name} with shape {shape} is not allowed; expected integers ({rows}, 3)")
        top, left, side = boxes.unbind(1)
        room = self.canvas_size - side
        if ((side < 1) | (top < 0) | (left < 0) | (top > room) | (left > room)).any():
            raise ValueError(f"{name} is not allowed: expected every box inside the canvas, with a side >= 1")

    def check_canvases(self, canvases, name: str = "canvases") -> None:
        """Raise a ValueError unless ``canvases`` is a finite tensor (B, 1, H, W) at the sensor's size."""
        size = self.canvas_size
        if not isinstance(canvases, Tensor) or canvases.ndim != 4 or canvases.shape[1:] != (1, size, size):
            shape = tuple(canvases.shape) if isinstance(canvases, Tensor) else type(canvases).__name__
            raise ValueError(f"{name} with shape {shape} are not allowed; expected (B, 1, {size}, {size})")
        if not torch.isfinite(canvases).all():
            raise ValueError(f"{name} with NaN or infinite pixels are not allowed; expected finite pixels")

    def cell_edges(self, start: Tensor, side: Tensor) -> tuple[Tensor, Tensor]:
        """First and one-past-last scene index (B, G) of each reading cell along one axis.

        Cell ``i`` of a box covers ``[floor(i s / G), ceil((i + 1) s / G))`` from the box's start: the bins of
        adaptive average pooling, so a whole-scene glimpse equals ``F.interpolate(scene, G, mode="area")``.
        """
        cells = torch.arange(self.glimpse_size)
        first = start[:, None] + torch.div(cells * side[:, None], self.glimpse_size, rounding_mode="floor")
        past = start[:, None] - torch.div(
            -(cells + 1) * side[:, None], self.glimpse_size, rounding_mode="floor"
        )  # ceil division
        return first, past

    def pooling_matrices(self, start: Tensor, side: Tensor) -> Tensor:
        """Matrices (B, G, H) whose row ``i`` averages the scene pixels of reading cell ``i`` along one axis."""
        first, past = self.cell_edges(start, side)
        pixels = torch.arange(self.canvas_size)
        in_cell = (pixels >= first[:, :, None]) & (pixels < past[:, :, None])
        return in_cell.float() / (past - first)[:, :, None].float()

    def read(self, canvases: Tensor, boxes: Tensor) -> Tensor:
        """The ``G x G`` readings (B, G, G) of ``canvases`` (B, 1, H, W) in ``boxes`` (B, 3), by area averaging:
        ``rows @ scene @ columns.T`` with the :meth:`pooling_matrices` of each box."""
        self.check_canvases(canvases)
        self.check_boxes(boxes, len(canvases))
        top, left, side = boxes.unbind(1)
        rows, columns = self.pooling_matrices(top, side), self.pooling_matrices(left, side)
        return rows @ canvases[:, 0].float() @ columns.transpose(1, 2)

    def empty_memory(self, n: int) -> Tensor:
        """``n`` memories (n, 2, H, W) of nothing seen yet."""
        check_int("n", n, low=1)
        return torch.zeros(n, 2, self.canvas_size, self.canvas_size)

    def paint(self, memory: Tensor, readings: Tensor, boxes: Tensor) -> Tensor:
        """A new memory with ``readings`` (B, G, G) painted over ``boxes``; ``memory`` itself is not changed.

        Scene pixel ``r`` of a box starting at ``top`` shows reading cell ``floor((r - top) G / s)`` (nearest
        neighbour). A pixel takes the new value only where the new view is at least as sharp as the stored one.
        """
        size, glimpse = self.canvas_size, self.glimpse_size
        if not isinstance(memory, Tensor) or memory.ndim != 4 or memory.shape[1:] != (2, size, size):
            raise ValueError(f"memory is not allowed; expected a tensor (B, 2, {size}, {size})")
        if not isinstance(readings, Tensor) or readings.shape != (len(memory), glimpse, glimpse):
            raise ValueError(f"readings is not allowed; expected a tensor ({len(memory)}, {glimpse}, {glimpse})")
        self.check_boxes(boxes, len(memory))
        top, left, side = boxes.unbind(1)
        pixels = torch.arange(self.canvas_size)
        rows = pixels[None, :] - top[:, None]  # (B, H): position inside the box, negative or >= s when outside
        cols = pixels[None, :] - left[:, None]
        row_cell = torch.div(rows.clamp(min=0) * self.glimpse_size, side[:, None], rounding_mode="floor")
        col_cell = torch.div(cols.clamp(min=0) * self.glimpse_size, side[:, None], rounding_mode="floor")
        row_cell = row_cell.clamp(max=self.glimpse_size - 1)
        col_cell = col_cell.clamp(max=self.glimpse_size - 1)
        batch = torch.arange(len(boxes))[:, None, None]
        upsampled = readings[batch, row_cell[:, :, None], col_cell[:, None, :]]
        inside = ((rows >= 0) & (rows < side[:, None]))[:, :, None] & ((cols >= 0) & (cols < side[:, None]))[
            :, None, :
        ]
        resolution = (self.glimpse_size / side.float())[:, None, None]
        sharper = inside & (resolution >= memory[:, RESOLUTION])
        painted = memory.clone()
        painted[:, SEEN] = torch.where(sharper, upsampled, memory[:, SEEN])
        painted[:, RESOLUTION] = torch.where(sharper, resolution.expand_as(sharper), memory[:, RESOLUTION])
        return painted

    def remember(self, canvases: Tensor, boxes: Tensor) -> Tensor:
        """The memory (B, 2, H, W) after glimpses ``boxes`` (B, T, 3) of ``canvases``, taken in order."""
        self.check_canvases(canvases)
        if not isinstance(boxes, Tensor) or boxes.ndim != 3 or (len(boxes), boxes.shape[-1]) != (len(canvases), 3):
            raise ValueError(f"boxes is not allowed; expected a tensor ({len(canvases)}, T, 3) of glimpse boxes")
        memory = self.empty_memory(len(canvases))
        for step in range(boxes.shape[1]):  # a loop over a handful of glimpses, not over samples or pixels
            memory = self.paint(memory, self.read(canvases, boxes[:, step]), boxes[:, step])
        return memory
