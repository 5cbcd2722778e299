"""A stand-in executor for sweep tests (not collected as tests)."""

from __future__ import annotations


class NoExecutor:
    """An executor that must not be used: every task is expected to be resumed or refused."""

    def submit(self, *args: object) -> None:
        raise AssertionError("nothing should be submitted")

    def pending(self) -> int:
        return 0

    def wait_any(self) -> list:
        return []

    def close(self) -> None:
        pass
