"""Ground truth: join labels sent as feedback to the predictions the spool recorded.

`PredictionLog` remembers the recent predictions ((request_id, index) -> predicted class,
model version, arrival sequence number); `FeedbackBook` attaches labels to them and
computes live accuracy over the last N ingested records. Both are bounded. Validating the
HTTP body is the web layer's job; `parse_label` turns a class id or name into an id.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from atelier.runtime.errors import InvalidLabelError, UnknownRequestError

RecordKey = tuple[str, int]


@dataclass(frozen=True)
class Prediction:
    predicted_class: int
    model_version: str
    seq: int  # arrival sequence number: 1 for the first record ever added to the log


class PredictionLog:
    """The last ``capacity`` predictions by (request_id, index), with arrival numbers."""

    def __init__(self, capacity: int = 200_000) -> None:
        if capacity < 1:
            raise ValueError(f"prediction log capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[RecordKey, Prediction] = OrderedDict()
        self.seq = 0  # sequence number of the last record added

    def __len__(self) -> int:
        return len(self._items)

    def add(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Remember records (spool records: request_id, index, predicted_class, model_version).

        A key seen again takes the new prediction and arrival number.
        """
        for r in records:
            self.seq += 1
            key = (str(r["request_id"]), int(r["index"]))
            self._items[key] = Prediction(
                int(r["predicted_class"]), str(r["model_version"]), self.seq
            )
            self._items.move_to_end(key)
            if len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def get(self, request_id: str, index: int = 0) -> Prediction | None:
        return self._items.get((request_id, index))


@dataclass(frozen=True)
class Labelled:
    label: int
    prediction: Prediction

    @property
    def correct(self) -> bool:
        return self.label == self.prediction.predicted_class


class FeedbackBook:
    """Labels joined to predictions; live accuracy. At most ``capacity`` labelled items."""

    def __init__(self, predictions: PredictionLog, capacity: int = 200_000) -> None:
        if capacity < 1:
            raise ValueError(f"feedback capacity must be >= 1, got {capacity}")
        self.predictions = predictions
        self.capacity = capacity
        self._labels: OrderedDict[RecordKey, Labelled] = OrderedDict()
        self._since_seq = 0  # predictions with seq > this count for accuracy(None)

    def __len__(self) -> int:
        return len(self._labels)

    def record(self, request_id: str, label: int, index: int = 0) -> bool:
        """Join ``label`` to the prediction for (request_id, index); True if it was right.

        A second label for the same key replaces the first.

        Raises `UnknownRequestError` when the log holds no such prediction (never served,
        not ingested yet, or evicted from the bounded log).
        """
        pred = self.predictions.get(request_id, index)
        if pred is None:
            raise UnknownRequestError(
                f"no recent prediction for request id {request_id!r} index {index}",
                hint="send feedback for a request the server answered recently, with the id "
                "it returned, after the sidecar has ingested it",
            )
        key = (request_id, index)
        item = Labelled(label, pred)
        self._labels[key] = item
        self._labels.move_to_end(key)
        if len(self._labels) > self.capacity:
            self._labels.popitem(last=False)
        return item.correct

    def accuracy(
        self, last_n_records: int | None = None, model_version: str | None = None
    ) -> tuple[float | None, int]:
        """(accuracy, labelled count) over the last N ingested records.

        ``last_n_records`` counts arrivals in the prediction log, labelled or not; None
        means since the book was last reset. Accuracy is None when nothing is labelled:
        no data is not the same as a good model. ``model_version`` restricts to one version.
        """
        if last_n_records is None:
            floor = self._since_seq
        else:
            floor = max(self._since_seq, self.predictions.seq - max(0, last_n_records))
        n = correct = 0
        for item in self._labels.values():
            p = item.prediction
            if p.seq > floor and (model_version is None or p.model_version == model_version):
                n += 1
                correct += item.correct
        return (correct / n if n else None), n

    def reset(self) -> None:
        """Forget labels; only predictions ingested from now on count (a model switch)."""
        self._labels.clear()
        self._since_seq = self.predictions.seq


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
