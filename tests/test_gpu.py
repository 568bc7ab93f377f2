"""The CUDA path (fp16 models, the SD pipeline on the GPU): run where a GPU is present, skipped elsewhere."""

import pytest
import torch
from helpers import tiny_overrides

from vldd.configs.distill import load_config

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_tiny_distill_on_cuda_in_fp16(tiny_cache, tmp_path):
    from vldd.jobs.distill import distill

    config = load_config(overrides=tiny_overrides(tmp_path / "run", device="cuda", dtype="fp16"))
    result = distill(config, cache_dir=tiny_cache)
    assert result.dataset.num_rows == 2 * 3
    assert result.manifest["dtype"] == "float16" and result.manifest["device"].startswith("cuda")


def test_real_shape_unet_forward_in_fp16_is_finite(tmp_path):
    from diffusers import UNet2DConditionModel

    from vldd.models.registry import resolve_model

    unet = UNet2DConditionModel.from_pretrained(resolve_model("shapes://sd15", tmp_path), subfolder="unet",
                                                torch_dtype=torch.float16).to("cuda")
    sample = torch.randn(2, 4, 64, 64, device="cuda", dtype=torch.float16)
    context = torch.randn(2, 77, 768, device="cuda", dtype=torch.float16)
    with torch.inference_mode():
        out = unet(sample, 500, encoder_hidden_states=context).sample
    assert out.shape == sample.shape and torch.isfinite(out).all()
