"""The demo's environment: Prefect embedded and quiet, no telemetry, and the detector's cold start
sized for the demo's budget (``demo_environment``); every value is a default the user's own
exports override."""

from __future__ import annotations

import os
from pathlib import Path

# The demo runs Prefect embedded, quietly, with the detector's cold start sized for its budget.
# Each value is a default: anything the user exported wins.
DEMO_ENV = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",  # the progress display shows what happens
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "MPLBACKEND": "Agg",
    # Only where no detector ships (UNMARK_SHIPPED_WEIGHTS names a folder without one) is a detector
    # trained from scratch on first use; on a 2-core CPU the demo can give it minutes, not the
    # default twenty, so it settles for a clean pool at 75% precision, not 98%. The shipped detector
    # keeps its own calibrated thresholds.
    "UNMARK_TRIAGE_TARGET_PRECISION": "0.75",
    "UNMARK_DETECTOR_VAL_SAMPLES": "80",
}
DETECTOR_SHARE = 0.35  # of the demo's budget, for the detector's cold start


def demo_environment(home: Path, minutes: float = 12.0) -> dict[str, str]:
    """Set the demo's environment in this process (before Prefect is imported): no telemetry,
    ``PREFECT_HOME`` in ``home/prefect``, embedded mode (``PREFECT_API_URL`` unset), the
    defaults above, and a detector cold start of ``DETECTOR_SHARE`` of ``minutes``. Returns what
    it set."""
    prefect_home = Path(home).resolve() / "prefect"
    wanted = {**DEMO_ENV, "PREFECT_HOME": str(prefect_home),
              "UNMARK_DETECTOR_MAX_MINUTES": f"{DETECTOR_SHARE * minutes:.1f}"}
    applied = {k: v for k, v in wanted.items() if k not in os.environ}
    os.environ.update(applied)
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)  # Prefect makes only the last level
    if os.environ.pop("PREFECT_API_URL", None):
        applied["PREFECT_API_URL"] = "(unset: the demo runs Prefect embedded)"
    return applied
