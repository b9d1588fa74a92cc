"""The one error type that every user-facing problem in ``schelix`` raises."""

from __future__ import annotations

__all__ = ["SchelixError", "SchelixWarning"]


class SchelixError(ValueError):
    """A problem with the user's input or settings.

    The message always names the problem *and* the fix, in plain words, so the
    CLI can print it as a one-line reason and the app can show it verbatim.

    Parameters
    ----------
    problem
        What is wrong, e.g. ``"Batch column 'donor' is not in adata.obs"``.
    fix
        What to do about it, e.g. ``"choose one of: 'batch', 'sample'"``.
    """

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(problem if not fix else f"{problem}. Fix: {fix}")


class SchelixWarning(UserWarning):
    """Something was changed or skipped on the user's behalf (and said so)."""
