"""The ControlNet 1.1 apps (`lllyasviel/ControlNet-v1-1`), one small file each, next to the unchanged 1.0 apps.

`common.py` holds what they share: the 1.1 controls and defaults, the Preprocessor rule (detector at the
Preprocessor Resolution or the upload itself, then a bilinear resize to the output size) and `v11_app`,
which fills an `AppSpec` from an app's own parts.
"""
