"""The app's steps, in order, written once.

:data:`STEPS` drives everything that depends on the order: the navigation (``st.navigation``
in ``app.py``), the sidebar checklist, each page's title and number, the workspace's step
states (:mod:`studio.workspace`) and the README's list (a test checks that it agrees).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HOME", "STEPS", "WORK_STEPS", "Step", "by_key"]


@dataclass(frozen=True)
class Step:
    """One page of the app.

    Attributes
    ----------
    key
        Short name (workspace state, job folders, links).
    title
        Name shown in the sidebar, the page heading and the browser tab.
    page
        The page's script, relative to the repository root.
    url
        URL path of the page (``http://host:8501/<url>``).
    icon
        Material icon of the page.
    kept
        Whether the workspace records a result for it (``False`` for views such as the
        trajectory, which only shows what training wrote, and for mapping, which keeps its own
        files).
    note
        What the sidebar says after the title of a step that is not ``kept``.
    """

    key: str
    title: str
    page: str
    url: str
    icon: str = ":material/radio_button_unchecked:"
    kept: bool = True
    note: str = "view of the training"

    @property
    def number(self) -> int:
        """1-based position among :data:`STEPS`."""
        return STEPS.index(self) + 1

    @property
    def heading(self) -> str:
        """``"<number> · <title>"``."""
        return f"{self.number} · {self.title}"


HOME = Step("home", "Home", "app.py", "", ":material/home:", kept=False)  # the entry point

#: The steps, in the order a user goes through them.
STEPS: tuple[Step, ...] = (
    Step("data", "Data", "pages/data.py", "Data", ":material/upload_file:"),
    Step("qc", "Quality control", "pages/qc.py", "QC", ":material/filter_alt:"),
    Step("anchors", "Anchor genes", "pages/anchor_genes.py", "Anchor_genes", ":material/anchor:"),
    Step("train", "Train", "pages/train.py", "Train", ":material/model_training:"),
    Step(
        "trajectory",
        "Trajectory",
        "pages/trajectory.py",
        "Trajectory",
        ":material/timeline:",
        kept=False,
    ),
    Step("metrics", "Metrics", "pages/metrics.py", "Metrics", ":material/leaderboard:"),
    Step("export", "Export", "pages/export.py", "Export", ":material/download:"),
    Step("map", "Map new data", "pages/map.py", "Map", ":material/hub:", kept=False, note=""),
)

#: Keys of the steps whose results the workspace keeps, in order.
WORK_STEPS: tuple[str, ...] = tuple(s.key for s in STEPS if s.kept)


def by_key(key: str) -> Step:
    """The step (or :data:`HOME`) called ``key``."""
    for step in (HOME, *STEPS):
        if step.key == key:
            return step
    raise KeyError(key)
