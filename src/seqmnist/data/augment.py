"""Training-batch augmentation: random affine maps and elastic distortion of whole batches.

One ``grid_sample`` per batch on the batch's device, every image with its own random draw:
no per-sample Python, no PIL. The draws come from the global RNG of the batch's device,
which every checkpoint saves (seqmnist.training.faults), so a seeded run is reproducible and
a resumed run equals an uninterrupted one.

Elastic distortion follows Simard, Steinkraus and Platt (ICDAR 2003): a random displacement
field, uniform in [-1, 1] per pixel, smoothed by a Gaussian of ``elastic_sigma`` pixels and
scaled by ``elastic_alpha`` pixels.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from seqmnist.core.checks import Rule, check_all, number
from seqmnist.core.errors import ConfigError

# ``data.augment.<name>``: the strengths a config may set (0 switches a part off).
RULES: dict[str, Rule] = {
    "rotate": number(lambda v: 0 <= v <= 180, "a number of degrees in [0, 180]"),
    "translate": number(lambda v: 0 <= v <= 1, "a fraction of the image side in [0, 1]"),
    "scale": number(lambda v: 0 <= v < 1, "a number in [0, 1) (scale in [1-s, 1+s])"),
    "shear": number(lambda v: 0 <= v < 90, "a number of degrees in [0, 90)"),
    "elastic_alpha": number(lambda v: v >= 0, "a number of pixels >= 0"),
    "elastic_sigma": number(lambda v: v > 0, "a number of pixels > 0"),
    "flip": number(lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
}


@dataclass(frozen=True)
class BatchAugment:
    """Random affine map (rotation, shift, scale, shear), elastic distortion and a
    left-right mirror (for Fashion-MNIST's clothes; it would change digits).

    Args:
        rotate: degrees, uniform in ``[-rotate, rotate]``.
        translate: fraction of the image side, uniform in ``[-translate, translate]`` per axis.
        scale: relative, uniform in ``[1 - scale, 1 + scale]`` (one factor for both axes).
        shear: degrees along x, uniform in ``[-shear, shear]``.
        elastic_alpha: size of the elastic displacement in pixels (0: none).
        elastic_sigma: smoothness of the displacement field in pixels.
        flip: probability of mirroring an image left to right.
    """

    rotate: float = 0.0
    translate: float = 0.0
    scale: float = 0.0
    shear: float = 0.0
    elastic_alpha: float = 0.0
    elastic_sigma: float = 4.0
    flip: float = 0.0

    @classmethod
    def from_config(cls, values: dict[str, Any] | None) -> BatchAugment:
        """From ``data.augment`` (a mapping of strengths; ``None``: no augmentation)."""
        values = dict(values or {})
        unknown = sorted(set(values) - set(RULES))
        if unknown:
            raise ConfigError(
                f"data.augment has no key {unknown[0]!r}; its keys are {list(RULES)} "
                "(conf/augment/ shows them)."
            )
        check_all(RULES, values, prefix="data.augment.")
        return cls(**{k: float(v) for k, v in values.items()})

    @property
    def active(self) -> bool:
        """Whether any part changes images (all strengths 0: the batch is left as it is)."""
        return any(
            (self.rotate, self.translate, self.scale, self.shear, self.elastic_alpha, self.flip)
        )

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, H, W)`` float images -> the same shape, each image with its own draw."""
        if not self.active:
            return images
        n, h, w = images.shape
        grid = F.affine_grid(self.inverse_affine(n, images), [n, 1, h, w], align_corners=False)
        if self.elastic_alpha:
            grid = grid + self._displacement(n, h, w, images)
        out = F.grid_sample(
            images.unsqueeze(1), grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        return out.squeeze(1)

    def _uniform(self, n: int, limit: float, like: torch.Tensor) -> torch.Tensor:
        """``n`` draws uniform in ``[-limit, limit]`` (float32, on ``like``'s device)."""
        return (torch.rand(n, device=like.device) * 2 - 1) * limit

    def inverse_affine(self, n: int, like: torch.Tensor) -> torch.Tensor:
        """``(N, 2, 3)`` maps from output to input coordinates (affine_grid's convention).

        The forward map is translate . rotate . shear . scale about the image centre, in
        affine_grid's normalised coordinates ([-1, 1] across the image).
        """
        angle = self._uniform(n, math.radians(self.rotate), like)
        shear = self._uniform(n, math.radians(self.shear), like)
        factor = 1 + self._uniform(n, self.scale, like)
        shift = torch.stack(
            [
                self._uniform(n, 2 * self.translate, like),
                self._uniform(n, 2 * self.translate, like),
            ],
            dim=1,
        )
        cos, sin = torch.cos(angle), torch.sin(angle)
        rot = torch.stack([cos, -sin, sin, cos], dim=1).view(n, 2, 2)
        shr = torch.eye(2, device=like.device).repeat(n, 1, 1)
        shr[:, 0, 1] = torch.tan(shear)
        forward = rot @ shr * factor.view(n, 1, 1)
        if self.flip:  # a mirror is x -> -x: the map's first column negated
            mirror = 1 - 2 * (torch.rand(n, device=like.device) < self.flip).float()
            forward[:, :, 0] *= mirror.view(n, 1)
        inverse = torch.linalg.inv(forward)
        offset = -(inverse @ shift.unsqueeze(-1))
        return torch.cat([inverse, offset], dim=2).to(like.dtype)

    def _displacement(self, n: int, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
        """``(N, H, W, 2)`` smooth random offsets in normalised grid units."""
        field = torch.rand(n, 2, h, w, device=like.device) * 2 - 1
        # Separable and linear: blurring is a matrix product on each side.
        sigma = self.elastic_sigma
        field = _blur_matrix(h, sigma, like.device) @ field @ _blur_matrix(w, sigma, like.device).T
        # Pixels -> normalised units (2 / side), x offsets first as grid_sample reads them.
        scale = torch.tensor([2.0 / w, 2.0 / h], device=like.device) * self.elastic_alpha
        return (field.permute(0, 2, 3, 1) * scale).to(like.dtype)


def _blur_matrix(side: int, sigma: float, device: torch.device) -> torch.Tensor:
    """``(side, side)`` matrix ``M`` with ``M @ v`` = ``v`` blurred by a normalised Gaussian
    (+-3 sigma, reflected borders: torchvision's ``gaussian_blur`` along one axis, which on a
    whole batch costs ~10x more as a 2-D convolution)."""
    size = min(2 * math.ceil(3 * sigma) + 1, 2 * side - 1)  # odd; reflect padding < side
    x = torch.arange(size, dtype=torch.float32) - size // 2
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    pad = size // 2
    # Row j of the blurred identity is the blur of basis vector j: column j of M.
    eye = F.pad(torch.eye(side).unsqueeze(1), (pad, pad), mode="reflect")
    return F.conv1d(eye, kernel.view(1, 1, size)).squeeze(1).T.contiguous().to(device)
