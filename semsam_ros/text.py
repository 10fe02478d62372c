"""Text helpers shared by the libraries and the front ends."""
from __future__ import annotations


def one_line(message: str, limit: int = 300) -> str:
    """A message on one line of at most ``limit`` characters (long checkpoint reports are cut with "...")."""
    text = "; ".join(line.strip() for line in message.splitlines() if line.strip())
    return text if len(text) <= limit else text[: limit - 4].rstrip() + " ..."
