"""The foundation: errors with hints, the records that flow between stages, platform
directories, the machine's CPU name, and files that survive a crash. Imports nothing else of
edgepref.
"""
