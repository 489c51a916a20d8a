"""Fault injection for tests: TSTOOL_FAULT names where a run should crash, fill the disk or see a NaN.

Values (comma-separated): `save:weights`, `save:state`, `save:before-rename`, `save:before-link`
(the process dies there, as on SIGKILL), the same names with `:enospc` (the write fails as on a full
disk), and `nan@K` or `nan@K-M` (the loss of optimizer steps K..M is NaN).
"""

from __future__ import annotations

import os

CRASH_EXIT_CODE = 17


def _faults() -> list[str]:
    return [f.strip() for f in os.environ.get("TSTOOL_FAULT", "").split(",") if f.strip()]


def fault_point(name: str) -> None:
    """Die or fail here if the environment asks for it."""
    faults = _faults()
    if name in faults:
        os._exit(CRASH_EXIT_CODE)
    if f"{name}:enospc" in faults:
        raise OSError(28, "No space left on device (simulated)")


def nan_at(step: int) -> bool:
    for fault in _faults():
        if fault.startswith("nan@"):
            first, _, last = fault[4:].partition("-")
            if int(first) <= step <= int(last or first):
                return True
    return False
