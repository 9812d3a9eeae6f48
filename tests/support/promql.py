"""The vector selectors and metric names of a PromQL expression: enough of PromQL for the
dashboard tests to check every query's metrics and matchers (not a parser)."""

from __future__ import annotations

import re

_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless"}
    | {"bool", "offset", "inf", "nan", "Inf", "NaN"}
    # Aggregation operators: `sum by (x) (...)` puts a keyword between name and parenthesis.
    | {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values"}
    | {"bottomk", "topk", "quantile", "limitk", "limit_ratio"}
)
_LABEL_LISTS = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric name, matchers text) of every vector selector in a PromQL expression."""
    text = _LABEL_LISTS.sub(r"\1", expr)
    text = re.sub(r"\[[^\]]*\]", "", text)
    blocks: list[str] = []

    def stash(m: re.Match[str]) -> str:
        blocks.append(m.group(0))
        return f"{{#{len(blocks) - 1}}}"

    text = re.sub(r"\{[^}]*\}", stash, text)
    text = re.sub(r'"[^"]*"', '""', text)
    out = []
    for m in re.finditer(r"(?<![\w.:$#])([a-zA-Z_:][\w:]*)\s*(\{#\d+\})?(\s*\()?", text):
        name, block, call = m.group(1), m.group(2), m.group(3)
        if call or name in _KEYWORDS:
            continue
        matchers = blocks[int(block[2:-1])] if block else ""
        out.append((name, matchers))
    return out


def metric_names(expr: str) -> set[str]:
    return {name for name, _ in selectors(expr)}
