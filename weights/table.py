"""The table of every weight file the suite uses: key -> repository, file name and role."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WeightFile:
    repo: str
    filename: str  # path inside the repo; the local lookup uses its last component
    role: str
    # ControlNets only: the residuals are averaged over H and W (set on the ControlNet when these weights load).
    global_average_pooling: bool = False

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
    # ControlNet 1.0: full files (SD 1.5 + ControlNet, 5.7 GB); only their `control_model.*` part is loaded.
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
    "cn11_normalbae": WeightFile(CN11, "control_v11p_sd15_normalbae.pth", "ControlNet 1.1 normal (BAE)"),
    "cn11_lineart": WeightFile(CN11, "control_v11p_sd15_lineart.pth", "ControlNet 1.1 lineart"),
    "cn11_lineart_anime": WeightFile(CN11, "control_v11p_sd15s2_lineart_anime.pth", "ControlNet 1.1 anime lineart"),
    # The only yaml difference among the 14 1.1 models: control_v11e_sd15_shuffle.yaml adds
    # `global_average_pooling: True`; the 13 others are cldm_v15.yaml.
    "cn11_shuffle": WeightFile(CN11, "control_v11e_sd15_shuffle.pth", "ControlNet 1.1 content shuffle",
                               global_average_pooling=True),
    "cn11_inpaint": WeightFile(CN11, "control_v11p_sd15_inpaint.pth", "ControlNet 1.1 inpaint"),
    "cn11_tile": WeightFile(CN11, "control_v11f1e_sd15_tile.pth", "ControlNet 1.1 tile"),
    "cn11_ip2p": WeightFile(CN11, "control_v11e_sd15_ip2p.pth", "ControlNet 1.1 instruct pix2pix"),
    # Annotators.
    "hed": WeightFile(ANNOTATORS, "ControlNetHED.pth", "HED soft-edge detector"),
    "mlsd": WeightFile(ANNOTATORS, "mlsd_large_512_fp32.pth", "M-LSD line detector"),
    "openpose_body": WeightFile(ANNOTATORS, "body_pose_model.pth", "OpenPose body"),
    "openpose_hand": WeightFile(ANNOTATORS, "hand_pose_model.pth", "OpenPose hand"),
    "midas": WeightFile(ANNOTATORS, "dpt_hybrid-midas-501f0c75.pt", "MiDaS DPT-Hybrid depth"),
    "uniformer": WeightFile(ANNOTATORS, "upernet_global_small.pth", "UniFormer-S UPerNet ADE20K segmentation"),
    "lineart": WeightFile(ANNOTATORS, "sk_model.pth", "Lineart generator (fine)"),
    "lineart_coarse": WeightFile(ANNOTATORS, "sk_model2.pth", "Lineart generator (coarse)"),
    "lineart_anime": WeightFile(ANNOTATORS, "netG.pth", "Anime2Sketch lineart U-Net"),
    "pidinet": WeightFile(ANNOTATORS, "table5_pidinet.pth", "PiDiNet soft-edge detector"),
    "normalbae": WeightFile(ANNOTATORS, "scannet.pt", "Normal BAE surface normals (ScanNet)"),
    "zoe": WeightFile(ANNOTATORS, "ZoeD_M12_N.pt", "ZoeDepth metric depth"),
    "openpose_face": WeightFile(ANNOTATORS, "facenet.pth", "OpenPose face landmarks"),
    # Fast generation: the LCM-LoRA for SD 1.5 (diffusers/kohya LoRA format) and the tiny autoencoder.
    "lcm_lora": WeightFile("latent-consistency/lcm-lora-sdv1-5", "pytorch_lora_weights.safetensors", "LCM-LoRA for SD 1.5"),
    "taesd": WeightFile("madebyollin/taesd", "diffusion_pytorch_model.safetensors", "TAESD tiny autoencoder"),
}

CONTROLNETS: tuple[str, ...] = tuple(key for key, w in WEIGHTS.items() if w.repo in (CN10, CN11))
