"""Running the pipeline: the settings table (every flag once), which backend hosts each
model, the Runner that loops over the stages, the run summary, and judge evaluation.
"""
