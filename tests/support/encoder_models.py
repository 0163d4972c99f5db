"""The encoders loaded from generated model files: synthetic antelopev2, random BiSeNet and a tiny EVA-CLIP written
into a folder (support.encoder_fakes), then loaded by encoders.FaceEncoders on the CPU, as the tests of the
reference pipeline, curation and face similarity use them."""
import os

from encoders import FaceEncoders
from support import encoder_fakes as fakes


def make_models(root, faces=fakes.ONE_FACE):
    fakes.write_antelopev2(os.path.join(root, "insightface", "models", "antelopev2"), faces=faces)
    fakes.write_bisenet(os.path.join(root, "facexlib", "parsing_bisenet.pth"))
    fakes.write_eva_baai(os.path.join(root, "EVA02_CLIP_L_336_psz14_s6B.pt"), fakes.TINY_EVA)
    return FaceEncoders.load(os.path.join(root, "insightface"), os.path.join(root, "EVA02_CLIP_L_336_psz14_s6B.pt"),
                             os.path.join(root, "facexlib"), providers="CPU", eva_config=fakes.TINY_EVA)
