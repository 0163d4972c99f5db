"""Which photos make the identity: per-reference figures, curation (off/warn/drop/weight), likeness versus copying,
and the report (JSON, text table, preview). Importable without ComfyUI; reads only what the encoders produce.

One Apply/Encode call: results = FaceEncoders.encode(...) -> figures = measure_references(results) ->
curation = curate(figures, mode, Thresholds(...)) -> pulid_flux.curated_fusion.fuse_curated(tokens, fusion,
curation.token_rows(used), curation.weights) -> report = build_report(figures, curation, thresholds) for the
identity metadata (METADATA_KEY), render_table(report) and annotate_previews(preview rows, report)."""
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
    "measure_references", "parse_report", "problem_lines", "problems", "rank_best_of_n", "render_table", "sharpness", "verdict",
]
