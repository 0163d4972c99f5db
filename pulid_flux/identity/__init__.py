"""Saved identities, no ComfyUI: build.py makes and blends them, file.py is the file format (its one reader and
writer), card.py the PNG card carrying the same bytes, fingerprint.py their content fingerprint, store.py the
name rule and atomic writes, upload.py the upload handler behind POST /pulid_flux/identities."""
