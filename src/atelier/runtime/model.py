"""The CNN architectures, by name. Only torch is imported: this module ships in the .mar."""

from __future__ import annotations

from torch import nn

ARCHITECTURES = ("compact", "standard")


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class CompactNet(nn.Module):
    """Under 25,000 parameters: four conv blocks, global average pooling, one linear layer."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_block(in_channels, 16),
            *_block(16, 24),
            nn.MaxPool2d(2),
            *_block(24, 32),
            nn.MaxPool2d(2),
            *_block(32, 40),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(40, num_classes))

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.head(self.features(x))


class StandardNet(nn.Module):
    """The accurate one: two double-conv stages and a small dense head."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.25) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_block(in_channels, 32),
            *_block(32, 32),
            nn.MaxPool2d(2),
            nn.Dropout(dropout / 2),
            *_block(32, 64),
            *_block(64, 64),
            nn.MaxPool2d(2),
            nn.Dropout(dropout / 2),
            *_block(64, 128),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Sequential(
            nn.Linear(128 * 4, 256),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(256, num_classes),
        )

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.head(self.features(x))


def build_model(arch: str, in_channels: int, num_classes: int, dropout: float = 0.25) -> nn.Module:
    if arch == "compact":
        return CompactNet(in_channels, num_classes, dropout=dropout)
    if arch == "standard":
        return StandardNet(in_channels, num_classes, dropout=dropout)
    raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
