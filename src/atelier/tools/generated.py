"""`python -m atelier.tools.generated`: rewrite the generated part of checked-in files.

training/templates/metrics.yaml: its ``model_metrics`` section comes from
atelier.runtime.metrics (tests/unit/runtime/test_metrics.py fails when it is stale). The
chart's copies of monitoring/ (`atelier chart sync`) and k8s/ (`atelier.tools.k8s_sync`)
have their own commands.
"""

from __future__ import annotations

import sys

from atelier.runtime.metrics import render_model_metrics
from atelier.training.archive import METRICS_CONFIG

MARKER = (
    "# GENERATED below from atelier.runtime.metrics by `python -m atelier.tools.generated`"
    " - do not edit.\n"
)


def metrics_config(current: str) -> str:
    head = current.split("model_metrics:", 1)[0]
    if head.endswith(MARKER):
        head = head[: -len(MARKER)]
    return head + MARKER + render_model_metrics()


def main(argv: list[str] | None = None) -> int:
    check = "--check" in (argv if argv is not None else sys.argv[1:])
    text = METRICS_CONFIG.read_text()
    fresh = metrics_config(text)
    if fresh == text:
        return 0
    if check:
        print(f"{METRICS_CONFIG} is stale: run python -m atelier.tools.generated", file=sys.stderr)
        return 1
    METRICS_CONFIG.write_text(fresh)
    print(f"wrote {METRICS_CONFIG}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
