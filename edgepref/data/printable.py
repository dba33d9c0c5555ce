"""What "blank" means for input text: nothing in it draws a character. One definition for an
instruction, a conversation's turns and a system prompt (inputs.py and conversations.py)."""

from __future__ import annotations

import unicodedata

# Letters that draw nothing: Hangul fillers and the blank Braille pattern (category Lo/So, so
# unicodedata alone counts them as printable); used to dodge "blank" checks.
INVISIBLE_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")
# Unicode categories with nothing to read: controls, format characters (zero-width space and
# joiners, direction marks, BOM, soft hyphen), surrogates, and separators (spaces, line breaks)
INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zs", "Zl", "Zp"})


def has_printable(text: str) -> bool:
    """Whether `text` has a character that draws something (not whitespace, a control, a
    zero-width or direction mark, or a blank filler letter)."""
    return any(unicodedata.category(ch) not in INVISIBLE_CATEGORIES and ch not in INVISIBLE_LETTERS
               for ch in text)
