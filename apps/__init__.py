"""The apps: one small declaration per ControlNet front end (`apps/<name>.py` → `APP`, listed in
`apps.registry`), the annotator page (`apps/annotators.py`), the multi-condition page (`apps/multi.py`, its
UI-free part in `apps/multi_request.py`), the shared UI builder (`apps/builder.py`) and the UI-free core they
share with the CLI (`apps/spec.py`). Every page is registered once, in `apps.pages.PAGES`.
"""
