"""Training a ControlNet on a locked Stable Diffusion 1.5 (the original `tutorial_train.py` recipe).

`ControlNetTraining` wraps a `ControlLDM` (a plain nn.Module) as a LightningModule:
* loss = MSE(ε_pred, ε) with t ~ U{0, …, 999}, latents = VAE posterior sample × scale_factor, text via CLIP;
* AdamW over the ControlNet (+ the UNet decoder `output_blocks` and `out` when `sd_locked` is off); every
  other parameter has requires_grad False, so the SD encoder, VAE and text encoder never change;
* optional seeded prompt dropping (the paper's 50 % empty prompts; off by default, as in the original code).
`ImageLogger` saves the original's panels as PNG grids; `export_control` writes a control-only file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor, nn

from cldm.control_ldm import CONTROL_PREFIX
from cldm.ddim import DDIMSampler
from cldm.tools import save_state_dict

DECODER_PARTS = ("output_blocks", "out")


@dataclass(frozen=True)
class TrainingConfig:
    learning_rate: float = 1e-5
    sd_locked: bool = True
    only_mid_control: bool = False
    drop_prompt: float = 0.0  # probability of replacing a prompt by "" (the paper uses 0.5)
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.learning_rate > 0:
            raise ValueError(f"learning rate must be positive, got {self.learning_rate}")
        if not 0.0 <= self.drop_prompt <= 1.0:
            raise ValueError(f"drop_prompt is a probability in [0, 1], got {self.drop_prompt}")


class PromptDropper:
    """Replaces each prompt by the empty prompt with probability p, from its own seeded generator."""

    def __init__(self, p: float, seed: int = 0):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"prompt drop probability must be in [0, 1], got {p}")
        self.p = p
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, prompts: list[str]) -> list[str]:
        if self.p == 0.0:
            return list(prompts)
        drop = torch.rand(len(prompts), generator=self.generator) < self.p
        return ["" if d else p for p, d in zip(prompts, drop.tolist())]


def trainable_parameters(model: nn.Module, sd_locked: bool) -> list[nn.Parameter]:
    """The ControlNet, plus the UNet decoder (`output_blocks`, `out`) when SD is not locked."""
    params = list(model.control_model.parameters())
    if not sd_locked:
        unet = model.model.diffusion_model
        params += [p for part in DECODER_PARTS for p in getattr(unet, part).parameters()]
    return params


def freeze_all_but(model: nn.Module, params: list[nn.Parameter]) -> None:
    keep = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)


def extract(schedule: Tensor, t: Tensor, ndim: int) -> Tensor:
    """schedule[t] shaped (N, 1, 1, …) to broadcast over a batch of `ndim`-dimensional tensors."""
    return schedule.to(t.device)[t].float().reshape(-1, *([1] * (ndim - 1)))


def q_sample(model: nn.Module, z: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """x_t = √ᾱ_t·z + √(1−ᾱ_t)·ε."""
    return extract(model.sqrt_alphas_cumprod, t, z.ndim) * z + extract(model.sqrt_one_minus_alphas_cumprod, t, z.ndim) * noise


def diffusion_loss(model: nn.Module, z: Tensor, cond: dict, t: Tensor, noise: Tensor) -> Tensor:
    """MSE between the predicted and the true noise of x_t (eps-prediction)."""
    eps = model.apply_model(q_sample(model, z, t, noise), t, cond)
    return F.mse_loss(eps.float(), noise.float())


def nhwc_to_nchw(images: Tensor) -> Tensor:
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected a batch of HWC RGB images (N, H, W, 3), got shape {tuple(images.shape)}")
    return images.permute(0, 3, 1, 2).contiguous().float()


class ControlNetTraining(pl.LightningModule):
    def __init__(self, model: nn.Module, config: TrainingConfig):
        super().__init__()
        self.model = model
        self.config = config
        model.only_mid_control = config.only_mid_control
        self.trained = trainable_parameters(model, config.sd_locked)
        freeze_all_but(model, self.trained)
        self.drop = PromptDropper(config.drop_prompt, config.seed)

    def setup(self, stage: str) -> None:
        # One dropping stream per process, so that data-parallel ranks do not drop in lock-step.
        self.drop = PromptDropper(self.config.drop_prompt, self.config.seed + self.global_rank)

    def train(self, mode: bool = True) -> "ControlNetTraining":
        super().train(mode)
        # The frozen autoencoder and text encoder always run in eval mode, as in the original.
        self.model.first_stage_model.eval()
        self.model.cond_stage_model.eval()
        return self

    @torch.no_grad()
    def get_input(self, batch: dict, drop_prompts: bool = False) -> tuple[Tensor, dict]:
        """(latent z, cond) from a batch of dataset items (read under the config's first_stage_key, control_key
        and cond_stage_key); z is a fresh posterior sample × scale_factor."""
        keys = self.model.config
        x = nhwc_to_nchw(batch[keys.first_stage_key]).to(self.device, self.model.dtype)
        hint = nhwc_to_nchw(batch[keys.control_key]).to(self.device, self.model.dtype)
        if hint.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"hint size {tuple(hint.shape[-2:])} differs from image size {tuple(x.shape[-2:])}")
        prompts = list(batch[keys.cond_stage_key])
        if drop_prompts:
            prompts = self.drop(prompts)
        z = self.model.get_first_stage_encoding(self.model.encode_first_stage(x))
        context = self.model.get_learned_conditioning(prompts)
        return z.detach(), {"c_concat": [hint], "c_crossattn": [context.detach()]}

    def compute_loss(self, batch: dict, t: Tensor | None = None, noise: Tensor | None = None) -> Tensor:
        z, cond = self.get_input(batch, drop_prompts=self.training)
        if t is None:
            t = torch.randint(0, len(self.model.sqrt_alphas_cumprod), (z.shape[0],), device=z.device)
        if noise is None:
            noise = torch.randn_like(z)
        return diffusion_loss(self.model, z, cond, t.to(z.device), noise.to(z))

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss = self.compute_loss(batch)
        self.log("train/loss_simple", loss, prog_bar=True, batch_size=len(batch[self.model.config.cond_stage_key]))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.trained, lr=self.config.learning_rate)

    @torch.no_grad()
    def log_images(self, batch: dict, n: int = 4, ddim_steps: int = 50, guidance: float = 9.0) -> dict[str, Tensor]:
        """The original's panels, NCHW in [-1, 1]: reconstruction, control, conditioning, CFG samples."""
        batch = {k: v[:n] for k, v in batch.items()}
        z, cond = self.get_input(batch)
        hint, prompts = cond["c_concat"][0], list(batch[self.model.config.cond_stage_key])
        n, height, width = z.shape[0], hint.shape[-2], hint.shape[-1]
        uncond = {"c_concat": [hint], "c_crossattn": [self.model.get_unconditional_conditioning(n)]}
        samples, _ = DDIMSampler(self.model).sample(
            ddim_steps, n, tuple(z.shape[1:]), cond, eta=0.0,
            unconditional_guidance_scale=guidance, unconditional_conditioning=uncond,
        )
        return {
            "reconstruction": self.model.decode_first_stage(z),
            "control": hint * 2.0 - 1.0,
            "conditioning": torch.stack([text_image(p, width, height) for p in prompts]).to(hint),
            f"samples_cfg_scale_{guidance:.2f}": self.model.decode_first_stage(samples.to(z)),
        }


def text_image(text: str, width: int, height: int) -> Tensor:
    """The prompt drawn black on white (the original's `log_txt_as_img`), CHW in [-1, 1]."""
    image = Image.new("RGB", (width, height), "white")
    size = max(8, round(16 * width / 512))
    font = ImageFont.load_default(size=size)
    chars = max(1, int(40 * width / 256))
    lines = [text[i:i + chars] for i in range(0, len(text), chars)] or [""]
    ImageDraw.Draw(image).text((0, 0), "\n".join(lines), fill="black", font=font)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


def image_grid(images: Tensor, columns: int = 4) -> np.ndarray:
    """NCHW in [-1, 1] -> one HWC uint8 grid with `columns` columns (2 px black padding)."""
    images = ((images.detach().float().cpu().clamp(-1, 1) + 1) / 2 * 255).round().to(torch.uint8)
    n, c, h, w = images.shape
    columns = min(columns, n)
    rows = math.ceil(n / columns)
    pad = 2
    grid = torch.zeros(c, rows * (h + pad) + pad, columns * (w + pad) + pad, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, columns)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, top:top + h, left:left + w] = images[i]
    return grid.permute(1, 2, 0).numpy()


class ImageLogger(pl.Callback):
    """Every `frequency` batches (batch 0 included) saves each `log_images` panel as
    `<save_dir>/image_log/train/<key>_gs-<step>_e-<epoch>_b-<batch>.png` (at most 4 images, 4 per row)."""

    def __init__(self, save_dir: str | Path, frequency: int = 300, max_images: int = 4, ddim_steps: int = 50):
        if frequency < 1:
            raise ValueError(f"image logging frequency must be at least 1, got {frequency}")
        self.folder = Path(save_dir) / "image_log" / "train"
        self.frequency = frequency
        self.max_images = max_images
        self.ddim_steps = ddim_steps

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: ControlNetTraining, outputs, batch, batch_idx: int) -> None:
        if batch_idx % self.frequency or not trainer.is_global_zero:
            return
        was_training = pl_module.training
        pl_module.eval()
        try:
            panels = pl_module.log_images(batch, n=self.max_images, ddim_steps=self.ddim_steps)
        finally:
            pl_module.train(was_training)
        self.folder.mkdir(parents=True, exist_ok=True)
        for key, images in panels.items():
            name = f"{key}_gs-{trainer.global_step:06}_e-{trainer.current_epoch:06}_b-{batch_idx:06}.png"
            Image.fromarray(image_grid(images[: self.max_images])).save(self.folder / name)


def export_control(model: nn.Module, path: str | Path) -> Path:
    """Write the ControlNet as a control-only safetensors file (`control_model.*` keys), loadable by
    `cldm.model.load_control`. Refuses to overwrite."""
    state = {CONTROL_PREFIX + k: v for k, v in model.control_model.state_dict().items()}
    return save_state_dict(state, path)
