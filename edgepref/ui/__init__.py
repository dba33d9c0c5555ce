"""The faces: the click command line (cli/), terminal display, and the HTML report.
"""
