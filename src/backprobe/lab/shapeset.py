"""A Shapeset-like image task: which shapes does a small greyscale picture hold?

Glorot & Bengio (2010) studied deep networks on Shapeset-3×2: 32×32 greyscale images of
one or two objects, each a triangle, a parallelogram or an ellipse of random proportions,
size, rotation, position and grey level, the second drawn over the first. The class is
the set of shapes present, without their order: three single shapes and six pairs, nine
classes. :func:`shapeset_task` draws such images (smaller by default, 16×16), so that the
lab can rerun their activation-over-training experiment without downloading anything.

Geometry is computed in float64 from the task's own ``torch.Generator``, so the images
are a pure function of the arguments (pixels on a shape's edge do not flip between CPU
instruction sets at float32 rounding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import LabConfigError
from .tasks import Task

__all__ = ["SHAPES", "SHAPESET_CLASSES", "ShapesetTask", "shapeset_images", "shapeset_task"]

#: The three shape kinds, by index.
SHAPES = ("triangle", "parallelogram", "ellipse")
#: Class names: one shape (0-2), then each unordered pair (3-8).
SHAPESET_CLASSES = (
    *SHAPES,
    *(f"{SHAPES[a]}+{SHAPES[b]}" for a in range(3) for b in range(a, 3)),
)
#: Images drawn at once (the point-in-shape tests hold [chunk, vertices, pixels] floats).
_CHUNK = 1024


def _pair_class() -> torch.Tensor:
    """[3, 3] int64: the class of the unordered pair (a, b), a ≤ b, is ``table[a, b]``."""
    table = torch.zeros(3, 3, dtype=torch.long)
    index = 3
    for a in range(3):
        for b in range(a, 3):
            table[a, b] = table[b, a] = index
            index += 1
    return table


def _inside_polygon(local: torch.Tensor, vertices: torch.Tensor) -> torch.Tensor:
    """Whether each point lies in a convex polygon: bool [n, P].

    ``local`` [n, P, 2] are the points, ``vertices`` [n, k, 2] the polygon's corners in
    counter-clockwise order: a point is inside when it lies left of every edge."""
    edges = vertices.roll(-1, dims=1) - vertices  # [n, k, 2]
    rel = local[:, None] - vertices[:, :, None]  # [n, k, P, 2]
    cross = edges[:, :, None, 0] * rel[..., 1] - edges[:, :, None, 1] * rel[..., 0]
    return (cross >= 0).all(dim=1)


def _shape_masks(n: int, size: int, kinds: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One random object per image, of the given kind (int64 [n]): bool [n, size²].

    The object is centred in the middle half of the image, spans 12-30 % of its side, is
    rotated at random; a triangle has random angles, a parallelogram random side ratio
    and skew, an ellipse a random axis ratio."""
    d = torch.float64
    centre_px = (torch.arange(size, dtype=d) + 0.5) / size
    py, px = torch.meshgrid(centre_px, centre_px, indexing="ij")
    pixels = torch.stack([px, py], dim=-1).reshape(1, -1, 2)  # [1, P, 2]
    centre = 0.25 + 0.5 * torch.rand(n, 1, 2, generator=g, dtype=d)
    scale = 0.12 + 0.18 * torch.rand(n, 1, 1, generator=g, dtype=d)
    angle = 2 * math.pi * torch.rand(n, generator=g, dtype=d)
    cos, sin = angle.cos(), angle.sin()
    # The pixels in the object's own frame: rotated back by the angle, in units of scale.
    rotation_t = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)
    local = torch.einsum("nij,npj->npi", rotation_t, pixels - centre) / scale
    # Triangle: three points on the unit circle, 72-168° apart (counter-clockwise).
    gaps = 2 * math.pi / 3 * (0.6 + 0.8 * torch.rand(n, 2, generator=g, dtype=d))
    corners = math.pi / 2 + torch.cat([torch.zeros(n, 1, dtype=d), gaps.cumsum(1)], 1)
    triangle = torch.stack([corners.cos(), corners.sin()], -1)
    # Parallelogram: ±u ± v with u = (1, 0) and v of length 0.5-1 at 45-135°.
    skew = math.pi / 4 + math.pi / 2 * torch.rand(n, generator=g, dtype=d)
    ratio = 0.5 + 0.5 * torch.rand(n, generator=g, dtype=d)
    v = torch.stack([ratio * skew.cos(), ratio * skew.sin()], -1)
    u = torch.tensor([1.0, 0.0], dtype=d).expand(n, 2)
    parallelogram = torch.stack([-u - v, u - v, u + v, v - u], 1)
    # Ellipse: semi-axes 1 and 0.4-1.
    axis = 0.4 + 0.6 * torch.rand(n, 1, generator=g, dtype=d)
    ellipse = local[..., 0] ** 2 + (local[..., 1] / axis) ** 2 <= 1
    mask = ellipse
    for kind, vertices in ((0, triangle), (1, parallelogram)):
        rows = torch.nonzero(kinds == kind).flatten()
        if rows.numel():
            mask[rows] = _inside_polygon(local[rows], vertices[rows])
    return mask


def shapeset_images(n: int, size: int = 16, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` Shapeset-like images and their classes.

    Each image has a uniform background of grey level in [0, 0.5] and one or two objects
    (equally likely) of grey level in [0.5, 1], the second drawn over the first; its class
    is the set of shapes present (:data:`SHAPESET_CLASSES`). Pure function of the
    arguments (its own ``torch.Generator``).

    Returns:
        x: float32 [n, size²], pixel values in [0, 1] (row-major images).
        y: int64 [n], classes 0-8.
    """
    if n < 1 or size < 4:
        raise LabConfigError(
            f"Expected n >= 1 images of size >= 4 pixels, got {n=}, {size=}; pass e.g. "
            "shapeset_images(1000, 16)."
        )
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    table = _pair_class()
    for start in range(0, n, _CHUNK):
        m = min(_CHUNK, n - start)
        count = torch.randint(1, 3, (m,), generator=g)
        kinds = torch.randint(0, 3, (m, 2), generator=g)
        image = (0.5 * torch.rand(m, 1, generator=g, dtype=torch.float64)).expand(m, size * size)
        for slot in range(2):
            mask = _shape_masks(m, size, kinds[:, slot], g) & (count > slot)[:, None]
            grey = 0.5 + 0.5 * torch.rand(m, 1, generator=g, dtype=torch.float64)
            image = torch.where(mask, grey, image)
        xs.append(image.float())
        ys.append(torch.where(count == 1, kinds[:, 0], table[kinds[:, 0], kinds[:, 1]]))
    return torch.cat(xs), torch.cat(ys)


@dataclass(frozen=True)
class ShapesetTask(Task):
    """Shapeset-like images (:func:`shapeset_images`) as a classification task.

    The classes are not balanced: each single shape has probability 1/6, each pair of
    two different shapes 1/9, each pair of equal shapes 1/18."""

    @property
    def chance(self) -> float:
        """Accuracy of always answering a single shape: 1/6."""
        return 1.0 / 6.0


def shapeset_task(n_train: int, n_test: int, size: int = 16, *, seed: int = 0) -> ShapesetTask:
    """A Shapeset-like classification task: 9 classes, inputs of ``size²`` pixels in
    [0, 1]; the first ``n_train`` images of ``seed``'s draw train, the next ``n_test``
    test."""
    x, y = shapeset_images(n_train + n_test, size, seed=seed)
    return ShapesetTask(x[:n_train], y[:n_train], x[n_train:], y[n_train:], len(SHAPESET_CLASSES))
