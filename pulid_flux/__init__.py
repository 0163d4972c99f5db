"""PuLID-Flux core in plain torch: no ComfyUI imports anywhere in this package."""
from .config import OFFICIAL, TINY, PulidConfig, expected_shapes
from .embedding import FUSION_MODES, encode_id, encode_uncond_id, fuse_id_tokens, make_id_cond
from .injection import add_id_attention, double_block_ca, injection_points, single_block_ca, tokens_mask
from .model import IDCrossAttention, IDFormer, PulidFlux
from .weights import PulidWeightsError, load_pulid_flux, read_state_dict

__all__ = [
    "OFFICIAL", "TINY", "PulidConfig", "expected_shapes", "FUSION_MODES", "encode_id", "encode_uncond_id",
    "fuse_id_tokens", "make_id_cond", "add_id_attention", "double_block_ca", "injection_points",
    "single_block_ca", "tokens_mask", "IDCrossAttention", "IDFormer", "PulidFlux", "PulidWeightsError",
    "load_pulid_flux", "read_state_dict",
]
