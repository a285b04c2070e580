"""The single-condition apps, by name: each `apps/<name>.py` declares one `AppSpec` (`APP`). Listing a module
here is all it takes to add an app: it becomes a page (`apps.pages`), an API endpoint and a CLI app."""
from apps import canny, depth, fake_scribble, hed, mlsd, normal, pose, scribble, scribble_interactive, seg
from apps.spec import AppSpec

APPS: dict[str, AppSpec] = {
    module.APP.name: module.APP
    for module in (canny, mlsd, hed, scribble, scribble_interactive, fake_scribble, pose, seg, depth, normal)
}
