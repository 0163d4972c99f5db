"""Which photos make the identity: per-reference figures, curation (off/warn/drop/weight), likeness versus copying,
and the report (JSON, text table, preview). Importable without ComfyUI; reads only what the encoders produce."""
