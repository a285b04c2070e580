"""The apps: one small declaration per ControlNet 1.0 front end (`apps/<name>.py` → `APP`), the annotator
page (`apps/annotators.py` → `SECTIONS`), the shared UI builder (`apps/builder.py`) and the UI-free core
they share with the CLI (`apps/spec.py`).

A new single-ControlNet app is one more `AppSpec` file added to `APPS`. Pages that are not a single app
(the multi-condition page `apps/multi.py`, the annotator page) are `apps.builder.Page`s, assembled by
`launch.py` (`extra_pages`) under the names below.
"""
from apps import annotators, canny, depth, fake_scribble, hed, mlsd, normal, pose, scribble, scribble_interactive, seg
from apps.spec import AppSpec

APPS: dict[str, AppSpec] = {
    module.APP.name: module.APP
    for module in (canny, mlsd, hed, scribble, scribble_interactive, fake_scribble, pose, seg, depth, normal)
}
MULTI_PAGE = "multi"
ANNOTATOR_PAGE = "annotators"
ANNOTATOR_SECTIONS = annotators.SECTIONS
PAGES: tuple[str, ...] = (*APPS, MULTI_PAGE, ANNOTATOR_PAGE)
