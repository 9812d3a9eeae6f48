"""Ground truth: a label sent as feedback, as a class id of the version it is for.

The join itself is in the inference log (`atelier.drift.inference_log`): any replica's
sidecar stores the label on the logged prediction, or keeps it until the prediction lands.
"""

from __future__ import annotations

from collections.abc import Sequence

from atelier.runtime.errors import InvalidLabelError


def parse_label(value: object, class_names: Sequence[str]) -> int:
    """A class id from an int id or a class name (exact, then case-insensitive)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < len(class_names):
            return value
        raise InvalidLabelError(
            f"label {value} is outside the class ids 0..{len(class_names) - 1}",
            hint="send a class id or one of the class names",
        )
    if isinstance(value, str):
        if value in class_names:
            return list(class_names).index(value)
        folded = [c.casefold() for c in class_names]
        if value.casefold() in folded:
            return folded.index(value.casefold())
        raise InvalidLabelError(
            f"label {value!r} is not a class name",
            hint=f"use one of {', '.join(class_names)} or a class id",
        )
    raise InvalidLabelError(
        f"label must be a class id (integer) or a class name (string), got {type(value).__name__}",
        hint="send a class id or one of the class names",
    )
