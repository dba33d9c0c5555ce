"""The pipeline's stages, one module each, and the configuration they read: complete (model
pool), evolve (EvolQuality), judge (UltraFeedback), verify (the verdict chain), pair.
A new stage is a `base.Stage` subclass in a module here, listed in runs.pipeline.STAGES.
"""
