"""Augmentation with torch ops only: random crop-and-resize and small rotations.

Both are one affine warp per image (``affine_grid`` + ``grid_sample``) on a batch of
[0, 1] images, so the cost is one pass over the batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from atelier.training.config import AugmentConfig


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Warp a random ``cfg.probability`` share of a float (N, C, H, W) batch in [0, 1]."""
    if not cfg.enabled or cfg.probability <= 0:
        return x
    n = x.shape[0]
    apply = torch.rand(n, generator=generator) < cfg.probability
    if not bool(apply.any()):
        return x
    # Crop: keep a square of side s (area s^2 in [min_crop_scale, 1]) and stretch it back.
    area = torch.empty(n).uniform_(cfg.min_crop_scale, 1.0, generator=generator)
    s = area.sqrt()
    # Shift the crop window so it stays inside the image.
    tx = (torch.rand(n, generator=generator) * 2 - 1) * (1 - s)
    ty = (torch.rand(n, generator=generator) * 2 - 1) * (1 - s)
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(cfg.max_rotation_degrees)
    cos, sin = torch.cos(angle) * s, torch.sin(angle) * s
    theta = torch.stack(
        [torch.stack([cos, -sin, tx], dim=1), torch.stack([sin, cos, ty], dim=1)], dim=1
    )
    identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).expand(n, 2, 3)
    theta = torch.where(apply.view(n, 1, 1), theta, identity).to(x)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
