"""Tiny random diffusers UNets for tests that need a network's structure, not its weights (shapes, determinism,
batch independence, counting calls)."""
import torch
from diffusers import UNet2DModel


def tiny_unet(cin: int = 1, cout: int = None, size: int = 16, blocks=(8, 16), groups: int = 4, seed: int = 0,
              **kw) -> UNet2DModel:
    """A two-level ``UNet2DModel`` from ``cin`` to ``cout`` (default ``cin``) channels on ``size x size`` images,
    ``blocks`` channels per level, weights drawn after ``torch.manual_seed(seed)``, in eval mode; ``kw`` goes to
    ``UNet2DModel`` (e.g. ``time_embedding_type="fourier"``)."""
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=size, in_channels=cin, out_channels=cout or cin, block_out_channels=tuple(blocks),
                       layers_per_block=1, norm_num_groups=groups, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), **kw).eval()
