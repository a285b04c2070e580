"""Stable Diffusion 1.5 building blocks: UNet, attention, VAE, CLIP text encoder, DDPM schedule."""
