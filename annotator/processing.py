"""Control inputs built by the ControlNet 1.1 apps themselves (no annotator): tile, img2img, inpaint.

Sizes are (H, W) = the shape of `resize_image(original, image_resolution)` (multiples of 64).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from annotator.util import HWC3

__all__ = ["InpaintInputs", "img2img_pixels", "img2img_start", "inpaint_composite", "inpaint_inputs", "tile_control"]


def tile_control(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Tile hint: the original image bilinearly resized to size = (H, W); no blur, no down-sampling, so a
    small input is simply up-sampled."""
    height, width = size
    return cv2.resize(HWC3(image), (width, height), interpolation=cv2.INTER_LINEAR)


def img2img_pixels(resized: np.ndarray) -> np.ndarray:
    """VAE input of the tile and inpaint apps: uint8 -> v/127 - 1 (float32, range -1 … 1.00787).

    Divides by 127, not 127.5: the original does, and the 1.1 tile/inpaint results were made that way."""
    return resized.astype(np.float32) / 127.0 - 1.0


def img2img_start(steps: int, denoise: float) -> int:
    """Index into the DDIM schedule the init latent is noised to: min(int(denoise·steps), steps - 1).

    Denoising then runs the steps with indices t_enc - 1 … 0 (t_enc steps)."""
    return min(int(denoise * steps), steps - 1)


@dataclass(frozen=True)
class InpaintInputs:
    image: np.ndarray  # float32 H×W×3, 0..255: the resized input
    mask: np.ndarray  # float32 H×W in [0, 1], blurred; 1 = repaint
    latent_mask: np.ndarray  # float32 (H/8)×(W/8): `mask` area-resized to the latent grid

    @property
    def hint(self) -> np.ndarray:
        """float32 H×W×3: image/255 where mask <= 0.5, exactly -1 in all channels where mask > 0.5."""
        hint = self.image.copy()
        hint[self.mask > 0.5] = -255.0
        return hint / 255.0

    @property
    def keep_mask(self) -> np.ndarray:
        """The sampler's mask (1 = keep the original latent): 1 - latent_mask."""
        return 1.0 - self.latent_mask

    @property
    def vae_input(self) -> np.ndarray:
        return img2img_pixels(self.image)


def inpaint_inputs(resized: np.ndarray, mask: np.ndarray, blur: float) -> InpaintInputs:
    """`resized`: the H×W×3 uint8 input at the output size; `mask`: the drawn mask at any size (2-D or
    channels-last; channel 0 is used, 255 = repaint); `blur`: the Gaussian sigma ("Mask Blur", 0.1..7).

    The mask is resized bilinearly as uint8, then /255, then blurred (kernel size derived from sigma)."""
    height, width = resized.shape[:2]
    channel = mask if mask.ndim == 2 else mask[:, :, 0]
    pixel = cv2.resize(np.ascontiguousarray(channel), (width, height), interpolation=cv2.INTER_LINEAR)
    pixel = cv2.GaussianBlur(pixel.astype(np.float32) / 255.0, (0, 0), blur)
    latent = cv2.resize(pixel, (width // 8, height // 8), interpolation=cv2.INTER_AREA)
    return InpaintInputs(resized.astype(np.float32), pixel, latent)


def inpaint_composite(decoded: np.ndarray, inputs: InpaintInputs) -> np.ndarray:
    """Paste the generated pixels into the input with the soft mask: `decoded` = VAE output ×127.5 + 127.5
    (N×H×W×3 or H×W×3, not clipped yet); returns uint8, the unmasked pixels equal to the input."""
    mask = inputs.mask[..., None]
    blended = decoded.astype(np.float32) * mask + inputs.image * (1.0 - mask)
    return blended.clip(0, 255).astype(np.uint8)
