"""The table of every weight file the suite uses: key -> repository, file name, role and download size.

ControlNets come in two choices per model: the default is the smallest file holding the weights (a
control-only fp16 safetensors published by the WebUI / ComfyUI communities, 723 MB), the `original` is the
official `.pth` (fp32; the 1.0 files also carry a whole SD 1.5, 5.7 GB). Both name, in `also`, the other
published copies of the same weights (the official file, the diffusers-format repository): when one of them is
already on disk or in the Hugging Face cache it is used and nothing is downloaded.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WeightFile:
    repo: str
    filename: str  # path inside the repo; the local lookup uses its last component
    role: str
    size_mb: float = 0.0  # download size (MB, 10^6 bytes), shown before a download starts
    original: str | None = None  # a smaller copy: the key of the official file holding the same weights
    also: tuple[tuple[str, str], ...] = ()  # other (repo, filename) copies of the same weights, used if on disk
    # ControlNets only: the residuals are averaged over H and W (set on the ControlNet when these weights load).
    global_average_pooling: bool = False

    @property
    def basename(self) -> str:
        return self.filename.rsplit("/", 1)[-1]

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo}/resolve/main/{self.filename}"

    @property
    def size(self) -> str:
        return format_size(self.size_mb)

    @property
    def label(self) -> str:
        """The role with the download size, as the weights dropdowns show it."""
        return f"{self.role} · {self.size}" if self.size_mb else self.role


def format_size(mb: float) -> str:
    return f"{mb / 1000:.2f} GB" if mb >= 1000 else f"{mb:.3g} MB"


SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
CN10 = "lllyasviel/ControlNet"
CN11 = "lllyasviel/ControlNet-v1-1"
CN10_FP16 = "webui/ControlNet-modules-safetensors"  # control-only, bare keys (prefix `control_model.` removed)
CN11_FP16 = "comfyanonymous/ControlNet-v1-1_fp16_safetensors"  # control-only, keys as in the official .pth
ANNOTATORS = "lllyasviel/Annotators"
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors")
CONTROL_FP16_MB = 723  # 722,596,338 bytes (1.0 canny), 722,601,100 bytes (1.1 canny)

# name -> the ControlNet 1.0 file's name (control_sd15_<name>.pth, control_<name>-fp16.safetensors).
CN10_NAMES = {"canny": "canny", "mlsd": "M-LSD", "hed": "HED", "scribble": "scribble", "openpose": "openpose",
              "seg": "segmentation", "depth": "depth", "normal": "normal"}
# key suffix -> (file stem in lllyasviel/ControlNet-v1-1, what it is).
CN11_STEMS = {
    "canny": ("control_v11p_sd15_canny", "canny"),
    "mlsd": ("control_v11p_sd15_mlsd", "M-LSD"),
    "softedge": ("control_v11p_sd15_softedge", "soft edge (HED)"),
    "scribble": ("control_v11p_sd15_scribble", "scribble"),
    "openpose": ("control_v11p_sd15_openpose", "openpose"),
    "seg": ("control_v11p_sd15_seg", "segmentation"),
    "depth": ("control_v11f1p_sd15_depth", "depth"),
    "normalbae": ("control_v11p_sd15_normalbae", "normal (BAE)"),
    "lineart": ("control_v11p_sd15_lineart", "lineart"),
    "lineart_anime": ("control_v11p_sd15s2_lineart_anime", "anime lineart"),
    "shuffle": ("control_v11e_sd15_shuffle", "content shuffle"),
    "inpaint": ("control_v11p_sd15_inpaint", "inpaint"),
    "tile": ("control_v11f1e_sd15_tile", "tile"),
    "ip2p": ("control_v11e_sd15_ip2p", "instruct pix2pix"),
}


def _controlnets() -> dict[str, WeightFile]:
    table: dict[str, WeightFile] = {}
    for name, what in CN10_NAMES.items():
        diffusers = (f"lllyasviel/sd-controlnet-{name}", DIFFUSERS_WEIGHTS[0])
        table[f"cn10_{name}_fp16"] = WeightFile(CN10_FP16, f"control_{name}-fp16.safetensors",
                                                f"ControlNet 1.0 {what} (fp16)", CONTROL_FP16_MB, f"cn10_{name}")
        # The full 1.0 files hold SD 1.5 + ControlNet; only their `control_model.*` part is loaded.
        table[f"cn10_{name}"] = WeightFile(CN10, f"models/control_sd15_{name}.pth",
                                           f"ControlNet 1.0 {what} (original, with SD 1.5)", 5710, also=(diffusers,))
    for name, (stem, what) in CN11_STEMS.items():
        fp32, fp16 = ((f"lllyasviel/{stem}", f) for f in DIFFUSERS_WEIGHTS)
        # The only yaml difference among the 14 1.1 models: control_v11e_sd15_shuffle.yaml adds
        # `global_average_pooling: True`; the 13 others are cldm_v15.yaml.
        pooled = name == "shuffle"
        table[f"cn11_{name}_fp16"] = WeightFile(CN11_FP16, f"{stem}_fp16.safetensors", f"ControlNet 1.1 {what} (fp16)",
                                                CONTROL_FP16_MB, f"cn11_{name}", also=(fp16,),
                                                global_average_pooling=pooled)
        table[f"cn11_{name}"] = WeightFile(CN11, f"{stem}.pth", f"ControlNet 1.1 {what} (original)", 1445,
                                           also=(fp32,), global_average_pooling=pooled)
    return table


WEIGHTS: dict[str, WeightFile] = {
    # Stable Diffusion 1.5 base (UNet, VAE, CLIP text encoder).
    "sd15": WeightFile(SD15, "v1-5-pruned-emaonly.safetensors", "SD 1.5 base model", 4265),
    **_controlnets(),
    # Annotators.
    "hed": WeightFile(ANNOTATORS, "ControlNetHED.pth", "HED soft-edge detector", 29.4),
    "mlsd": WeightFile(ANNOTATORS, "mlsd_large_512_fp32.pth", "M-LSD line detector", 6.34),
    "openpose_body": WeightFile(ANNOTATORS, "body_pose_model.pth", "OpenPose body", 209),
    "openpose_hand": WeightFile(ANNOTATORS, "hand_pose_model.pth", "OpenPose hand", 147),
    "midas": WeightFile(ANNOTATORS, "dpt_hybrid-midas-501f0c75.pt", "MiDaS DPT-Hybrid depth", 493),
    "uniformer": WeightFile(ANNOTATORS, "upernet_global_small.pth", "UniFormer-S UPerNet ADE20K segmentation", 206),
    "lineart": WeightFile(ANNOTATORS, "sk_model.pth", "Lineart generator (fine)", 17.2),
    "lineart_coarse": WeightFile(ANNOTATORS, "sk_model2.pth", "Lineart generator (coarse)", 17.2),
    "lineart_anime": WeightFile(ANNOTATORS, "netG.pth", "Anime2Sketch lineart U-Net", 218),
    "pidinet": WeightFile(ANNOTATORS, "table5_pidinet.pth", "PiDiNet soft-edge detector", 2.87),
    "normalbae": WeightFile(ANNOTATORS, "scannet.pt", "Normal BAE surface normals (ScanNet)", 291),
    "zoe": WeightFile(ANNOTATORS, "ZoeD_M12_N.pt", "ZoeDepth metric depth", 1440),
    "openpose_face": WeightFile(ANNOTATORS, "facenet.pth", "OpenPose face landmarks", 154),
    # Fast generation: the LCM-LoRA for SD 1.5 (diffusers/kohya LoRA format) and the tiny autoencoder.
    "lcm_lora": WeightFile("latent-consistency/lcm-lora-sdv1-5", "pytorch_lora_weights.safetensors", "LCM-LoRA for SD 1.5", 135),
    "taesd": WeightFile("madebyollin/taesd", "diffusion_pytorch_model.safetensors", "TAESD tiny autoencoder", 9.8),
}

CONTROLNETS: tuple[str, ...] = tuple(key for key, w in WEIGHTS.items() if w.repo in (CN10, CN11, CN10_FP16, CN11_FP16))


def sources(key: str) -> list[tuple[str, str]]:
    """Every published (repo, filename) holding the weights of `key`: its own file first, then (for a smaller
    copy) the official file, then the other copies (diffusers format)."""
    spec = WEIGHTS[key]
    found = [(spec.repo, spec.filename)]
    if spec.original:
        original = WEIGHTS[spec.original]
        found += [(original.repo, original.filename), *original.also]
    return found + [s for s in spec.also if s not in found]


def same_weights(key: str) -> str:
    """The key naming the weights `key` holds: its official file's key for a smaller copy, else itself."""
    return WEIGHTS[key].original or key
