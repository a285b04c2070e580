"""Every weight file the suite uses, where it comes from, and how it is fetched.

A file is looked up in the local directories first (the models directory, `annotator/ckpts/`,
`$ANNOTATOR_CKPTS`), else downloaded once with huggingface_hub into the hub cache (with progress,
resumable). When it cannot be had, `WeightsUnavailable` says which file, from which repository,
and where to put it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO_ROOT / "models"
ANNOTATOR_CKPTS = REPO_ROOT / "annotator" / "ckpts"


@dataclass(frozen=True)
class WeightFile:
    repo: str
    filename: str  # path inside the repo; the local lookup uses its last component
    role: str

    @property
    def basename(self) -> str:
        return self.filename.rsplit("/", 1)[-1]

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo}/resolve/main/{self.filename}"


SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
CN10 = "lllyasviel/ControlNet"
CN11 = "lllyasviel/ControlNet-v1-1"
ANNOTATORS = "lllyasviel/Annotators"

WEIGHTS: dict[str, WeightFile] = {
    # Stable Diffusion 1.5 base (UNet, VAE, CLIP text encoder).
    "sd15": WeightFile(SD15, "v1-5-pruned-emaonly.safetensors", "SD 1.5 base model"),
    # ControlNet 1.0: full files (SD 1.5 + ControlNet, 5.7 GB); the loader takes only `control_model.*`.
    **{
        f"cn10_{name}": WeightFile(CN10, f"models/control_sd15_{name}.pth", f"ControlNet 1.0 {name}")
        for name in ("canny", "mlsd", "hed", "scribble", "openpose", "seg", "depth", "normal")
    },
    # ControlNet 1.1: control-only files (1.45 GB).
    "cn11_canny": WeightFile(CN11, "control_v11p_sd15_canny.pth", "ControlNet 1.1 canny"),
    "cn11_mlsd": WeightFile(CN11, "control_v11p_sd15_mlsd.pth", "ControlNet 1.1 M-LSD"),
    "cn11_softedge": WeightFile(CN11, "control_v11p_sd15_softedge.pth", "ControlNet 1.1 soft edge (HED)"),
    "cn11_scribble": WeightFile(CN11, "control_v11p_sd15_scribble.pth", "ControlNet 1.1 scribble"),
    "cn11_openpose": WeightFile(CN11, "control_v11p_sd15_openpose.pth", "ControlNet 1.1 openpose"),
    "cn11_seg": WeightFile(CN11, "control_v11p_sd15_seg.pth", "ControlNet 1.1 segmentation"),
    "cn11_depth": WeightFile(CN11, "control_v11f1p_sd15_depth.pth", "ControlNet 1.1 depth"),
    # Annotators.
    "hed": WeightFile(ANNOTATORS, "ControlNetHED.pth", "HED soft-edge detector"),
    "mlsd": WeightFile(ANNOTATORS, "mlsd_large_512_fp32.pth", "M-LSD line detector"),
    "openpose_body": WeightFile(ANNOTATORS, "body_pose_model.pth", "OpenPose body"),
    "openpose_hand": WeightFile(ANNOTATORS, "hand_pose_model.pth", "OpenPose hand"),
    "midas": WeightFile(ANNOTATORS, "dpt_hybrid-midas-501f0c75.pt", "MiDaS DPT-Hybrid depth"),
    "uniformer": WeightFile(ANNOTATORS, "upernet_global_small.pth", "UniFormer-S UPerNet ADE20K segmentation"),
}


class WeightsUnavailable(FileNotFoundError):
    """A weight file is neither on disk nor downloadable; the message tells the user what to do."""


def local_dirs(extra: list[str | Path] | None = None) -> list[Path]:
    dirs = [Path(d) for d in (extra or [])]
    if os.environ.get("ANNOTATOR_CKPTS"):
        dirs.append(Path(os.environ["ANNOTATOR_CKPTS"]))
    dirs += [MODELS_DIR, ANNOTATOR_CKPTS]
    return dirs


def offline_mode() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def resolve(key: str, search_dirs: list[str | Path] | None = None, offline: bool | None = None) -> Path:
    """Path of weight file `key` (a key of WEIGHTS): local copy first, else a hub download."""
    spec = WEIGHTS[key]
    dirs = local_dirs(search_dirs)
    for d in dirs:
        candidate = d / spec.basename
        if candidate.is_file():
            return candidate
    offline = offline_mode() if offline is None else offline
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(spec.repo, spec.filename, local_files_only=offline))
    except Exception as err:  # offline, no network, 404, interrupted download, ...
        looked = ", ".join(str(d) for d in dirs)
        home = ANNOTATOR_CKPTS if spec.repo == ANNOTATORS else (dirs[0] if search_dirs else MODELS_DIR)
        reason = "offline mode is on and it is not in the hub cache" if offline else f"download failed ({type(err).__name__}: {err})"
        raise WeightsUnavailable(
            f"{spec.role}: weight file '{spec.basename}' is missing. Looked in: {looked}; {reason}. "
            f"Download it from {spec.url} (repo '{spec.repo}') and put it in {home}."
        ) from err
