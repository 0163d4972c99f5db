"""Which photos make the identity: per-reference figures, curation (off/warn/drop/weight), likeness versus copying,
and the report (JSON, text table, preview). Importable without ComfyUI; reads only what the encoders produce.

The product calls these through one function, encoders/references.encode_references (Apply PuLID-Flux, Encode
identity and `python -m pulid_tools identity`): FaceEncoders.locate_all -> measure_references -> curate(figures,
mode, Thresholds(...)) -> BiSeNet/EVA-CLIP/ID encoder on the kept photos only -> fusion (weighted for 'weight',
pulid_flux.curated_fusion) -> build_report (identity metadata under METADATA_KEY, render_table, annotate_previews).
"""
from .copying import CopyFigures, describe, landmark_distance, likeness_and_copy, rank_best_of_n
from .figures import FigureSet, ReferenceFigures, head_pose, measure_references, sharpness
from .preview import annotate_previews, annotate_reference
from .report import (METADATA_KEY, REPORT_FORMAT, REPORT_VERSION, build_report, parse_report, problem_lines,
                     render_table)
from .selection import (CURATE_MODES, THRESHOLD_INPUTS, VERDICTS, Curation, CurationError, Thresholds, curate,
                        problems, verdict)

__all__ = [
    "CURATE_MODES", "METADATA_KEY", "REPORT_FORMAT", "REPORT_VERSION", "THRESHOLD_INPUTS", "VERDICTS", "CopyFigures",
    "Curation", "CurationError", "FigureSet", "ReferenceFigures", "Thresholds", "annotate_previews",
    "annotate_reference", "build_report", "curate", "describe", "head_pose", "landmark_distance", "likeness_and_copy",
    "measure_references", "parse_report", "problem_lines", "problems", "rank_best_of_n", "render_table", "sharpness",
    "verdict",
]
