"""Every page of the suite, by name, in tab order: the single-condition apps (`apps.registry.APPS`, in their
groups: ControlNet 1.0, ControlNet 1.1), the multi-condition page and the annotator page. `launch.py --app
NAME` serves one, `--app all` all of them (each group as one tab holding its apps' tabs)."""
from __future__ import annotations

from apps.annotators import SECTIONS
from apps.builder import Page, annotator_page, app_page
from apps.multi import multi_page
from apps.registry import APPS, GROUP_OF

PAGES: dict[str, Page] = {
    **{name: app_page(spec, GROUP_OF[name]) for name, spec in APPS.items()},
    "multi": multi_page(),
    "annotators": annotator_page(SECTIONS),
}
