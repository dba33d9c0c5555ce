"""The judge's maths: the GBNF rating grammar, the pairwise verdict and its recipes (compare),
the calibration of thresholds on labelled pairs, and the verdict chain (cascade).
"""
