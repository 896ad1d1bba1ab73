"""Errors the CLI and the Blender operators turn into one clear line.

``BadInput`` means the user's input is wrong (exit code 2): a missing or undecodable video,
a video with no face, an unwritable output folder, a wrong model file. Anything else that
escapes is an internal error (exit code 1).
"""


class BadInput(Exception):
    """The input cannot be used; the message says what is wrong and what to do."""


class Cancelled(Exception):
    """The user cancelled the run (Esc in Blender, Ctrl-C or SIGTERM on the CLI)."""
