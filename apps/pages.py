"""Every page of the suite, by name, in tab order: the single-condition apps (`apps.registry.APPS`), the
multi-condition page and the annotator page. `launch.py --app NAME` serves one, `--app all` all of them."""
from __future__ import annotations

from apps.annotators import SECTIONS
from apps.builder import Page, annotator_page, app_page
from apps.multi import multi_page
from apps.registry import APPS

PAGES: dict[str, Page] = {
    **{name: app_page(spec) for name, spec in APPS.items()},
    "multi": multi_page(),
    "annotators": annotator_page(SECTIONS),
}
