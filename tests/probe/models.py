"""Tiny models the probe tests train: MLPs, a CNN, a residual net and odd-shaped ones."""

from __future__ import annotations

import itertools

import torch
from torch import nn


def mlp(act: type[nn.Module] = nn.Tanh, widths=(6, 12, 10, 3), dtype=torch.float64):
    """Linear → act → … → Linear."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(act())
    return nn.Sequential(*layers).to(dtype)


class SmallCNN(nn.Module):
    """Conv2d → ReLU → MaxPool → Conv2d → ReLU → Linear on 1×8×8 images."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.act1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(3, 4, 3, padding=1)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act1(self.conv1(x)))
        x = self.act2(self.conv2(x))
        return self.head(x.flatten(1))


class Block(nn.Module):
    """x + tanh(W x)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.lin = nn.Linear(width, width)
        self.act = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.lin(x))


class ResidualNet(nn.Module):
    """stem → two residual blocks → head."""

    def __init__(self, d_in: int = 6, width: int = 8, d_out: int = 3) -> None:
        super().__init__()
        self.stem = nn.Linear(d_in, width)
        self.blocks = nn.Sequential(Block(width), Block(width))
        self.head = nn.Linear(width, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def make_model(kind: str, dtype=torch.float64) -> nn.Module:
    """A model by name, with the input shape :func:`make_input` gives it."""
    if kind == "tanh_mlp":
        return mlp(nn.Tanh, dtype=dtype)
    if kind == "sigmoid_mlp":
        return mlp(nn.Sigmoid, dtype=dtype)
    if kind == "relu_mlp":
        return mlp(nn.ReLU, dtype=dtype)
    if kind == "cnn":
        return SmallCNN().to(dtype)
    if kind == "residual":
        return ResidualNet().to(dtype)
    raise ValueError(kind)


def make_input(kind: str, batch: int = 5, dtype=torch.float64) -> torch.Tensor:
    if kind == "cnn":
        return torch.randn(batch, 1, 8, 8, dtype=dtype)
    return torch.randn(batch, 6, dtype=dtype)


MODEL_KINDS = ("tanh_mlp", "sigmoid_mlp", "relu_mlp", "cnn", "residual")


def loss_fn(out: torch.Tensor) -> torch.Tensor:
    """A loss whose gradient differs per element (unlike a plain sum)."""
    return (out - 0.3).pow(2).mean() + out[..., 0].sin().sum()
