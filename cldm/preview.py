"""Loading TAESD (`ldm.taesd`) weight files for fast latent previews.

    taesd = load_taesd("models/taesd_decoder.safetensors", device="cuda", dtype=torch.float16)
    preview = taesd.decode(latent)          # [-1, 1], like model.decode_first_stage(latent); ~15x faster

Files read: madebyollin's own-format halves (`taesd_decoder.safetensors`/`.pth`, `taesd_encoder.*`; `.pth` through
`torch.load(weights_only=True)`) and diffusers' `AutoencoderTiny` file (`diffusion_pytorch_model.safetensors`,
both halves in one file). Every problem is a `CheckpointError` naming the file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cldm.checkpoint import CheckpointError, PathLike, load_state_dict
from ldm.taesd import TAESD, latent_channels, state_dict_from_diffusers

EXAMPLES = 3


def load_taesd(path: PathLike, encoder_path: PathLike | None = None, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> TAESD:
    """TAESD from a decoder file (own format) or a diffusers `AutoencoderTiny` file; the encoder comes from the
    diffusers file or from `encoder_path` (own format), else the model has none. Eval mode, no gradients."""
    path = Path(path)
    state = load_state_dict(path)
    if any(k.startswith(("decoder.layers.", "encoder.layers.")) for k in state):
        decoder, encoder = state_dict_from_diffusers(state)
        encoder_source = path if encoder else None
    else:
        decoder, encoder, encoder_source = state, {}, None
    if "1.weight" not in decoder:
        hint = " (this looks like an encoder file: pass it as encoder_path)" if "14.weight" in decoder else ""
        raise CheckpointError(path, f"not a TAESD decoder: no `1.weight`{hint}")
    if encoder_path is not None:
        if encoder_source is not None:
            raise CheckpointError(encoder_path, f"an encoder is already in {path}")
        encoder_source, encoder = Path(encoder_path), load_state_dict(encoder_path)
    model = TAESD(latent_channels(decoder), with_encoder=bool(encoder))
    _load(model.decoder, decoder, path)
    if encoder:
        _load(model.encoder, encoder, encoder_source)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _load(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} (file {list(v.shape)}, model {list(expected[k].shape)})" for k, v in state.items()
             if k in expected and v.shape != expected[k].shape]
    problems = [f"{len(keys)} {what} (e.g. {', '.join(keys[:EXAMPLES])})"
                for what, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                   ("shape mismatches", wrong)) if keys]
    if problems:
        raise CheckpointError(path, "does not fit TAESD: " + "; ".join(problems))
    module.load_state_dict(state)


@torch.no_grad()
def preview_images(taesd: TAESD, latents: torch.Tensor) -> list[np.ndarray]:
    """What the sampler's current latents (e.g. the predicted x0) look like: H×W×3 uint8 images via TAESD."""
    pixels = taesd.decode(latents.to(next(taesd.parameters()).device)).float().clamp(-1, 1)
    return list((pixels.permute(0, 2, 3, 1) * 127.5 + 127.5).round().to(torch.uint8).cpu().numpy())
