"""The single-condition apps, by name: each `apps/<name>.py` (ControlNet 1.0) or `apps/v11/<name>.py`
(ControlNet 1.1) declares one `AppSpec` (`APP`). Listing a module here is all it takes to add an app: it
becomes a page (`apps.pages`), an API endpoint and a CLI app. `GROUPS` names the two families; `--app all`
shows each as a tab of its own."""
from apps import canny, depth, fake_scribble, hed, mlsd, normal, pose, scribble, scribble_interactive, seg
from apps.spec import AppSpec
from apps.v11 import canny as v11_canny
from apps.v11 import depth as v11_depth
from apps.v11 import inpaint as v11_inpaint
from apps.v11 import ip2p as v11_ip2p
from apps.v11 import lineart as v11_lineart
from apps.v11 import lineart_anime as v11_lineart_anime
from apps.v11 import mlsd as v11_mlsd
from apps.v11 import normalbae as v11_normalbae
from apps.v11 import openpose as v11_openpose
from apps.v11 import scribble as v11_scribble
from apps.v11 import scribble_interactive as v11_scribble_interactive
from apps.v11 import seg as v11_seg
from apps.v11 import shuffle as v11_shuffle
from apps.v11 import softedge as v11_softedge
from apps.v11 import tile as v11_tile

GROUPS: dict[str, tuple[AppSpec, ...]] = {
    "ControlNet 1.0": tuple(module.APP for module in (
        canny, mlsd, hed, scribble, scribble_interactive, fake_scribble, pose, seg, depth, normal)),
    "ControlNet 1.1": tuple(module.APP for module in (
        v11_canny, v11_mlsd, v11_scribble, v11_scribble_interactive, v11_softedge, v11_openpose, v11_seg, v11_depth,
        v11_normalbae, v11_lineart, v11_lineart_anime, v11_shuffle, v11_ip2p, v11_tile, v11_inpaint)),
}

APPS: dict[str, AppSpec] = {spec.name: spec for specs in GROUPS.values() for spec in specs}
GROUP_OF: dict[str, str] = {spec.name: group for group, specs in GROUPS.items() for spec in specs}
