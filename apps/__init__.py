"""The apps: one small declaration per ControlNet 1.0 front end (`apps/<name>.py` → `APP`), the annotator
page (`apps/annotators.py` → `SECTIONS`), the shared UI builder (`apps/builder.py`) and the UI-free core
they share with the CLI (`apps/spec.py`).

A new single-ControlNet app is one more `AppSpec` file added to `APPS`. A multi-ControlNet page
(`cldm.pipeline.generate_multi`) would be a builder of its own next to `build_app`, taking several
AppSpecs (their annotators, controls and weights) and registered under its own name in `PAGES`.
"""
from apps import annotators, canny, depth, fake_scribble, hed, mlsd, normal, pose, scribble, scribble_interactive, seg
from apps.spec import AppSpec

APPS: dict[str, AppSpec] = {
    module.APP.name: module.APP
    for module in (canny, mlsd, hed, scribble, scribble_interactive, fake_scribble, pose, seg, depth, normal)
}
ANNOTATOR_PAGE = "annotators"
ANNOTATOR_SECTIONS = annotators.SECTIONS
PAGES: tuple[str, ...] = (*APPS, ANNOTATOR_PAGE)
