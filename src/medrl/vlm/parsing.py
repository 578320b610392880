"""Reading model completions: text, the <answer> part, a choice letter, a box. Never raises."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

# Text containing none of the four tags: a think or answer part holds no nested or second tag.
_UNTAGGED = r"(?:(?!</?think>|</?answer>).)*"
THINK_ANSWER = re.compile(
    rf"^\s*<think>{_UNTAGGED}</think>\s*<answer>{_UNTAGGED}</answer>\s*$", re.DOTALL
)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_NUMBER = r"[-+]?\d+(?:\.\d+)?"
_FOUR_NUMBERS = re.compile(
    rf"({_NUMBER})[\s,;()\[\]]+({_NUMBER})[\s,;()\[\]]+({_NUMBER})[\s,;()\[\]]+({_NUMBER})"
)
_MORE_NUMBERS = re.compile(rf"\s*[,;]?\s*{_NUMBER}")
_NUMBER_BEFORE = re.compile(rf"{_NUMBER}\s*[,;]?\s*$")
_LETTER = re.compile(r"(?<![A-Za-z])([A-Z])(?![A-Za-z])")


def completion_text(completion: Any) -> str:
    """Plain text of a completion: a string, or a conversational list of message dicts.

    Message content may be a string or a list of parts ``{"type": "text", "text": ...}``.
    Anything else gives ``""``.
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if not isinstance(completion, list | tuple):
        return ""
    pieces: list[str] = []
    for message in completion:
        content = message.get("content") if isinstance(message, dict) else message
        if isinstance(content, str):
            pieces.append(content)
        elif isinstance(content, list | tuple):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    pieces.append(part["text"])
                elif isinstance(part, str):
                    pieces.append(part)
    return "".join(pieces)


def has_think_answer_format(text: str) -> bool:
    """True when the whole text is one ``<think>...</think>`` then one ``<answer>...</answer>``.

    Neither part may contain a think or answer tag, so a second answer is not this format.
    """
    return bool(THINK_ANSWER.match(text))


def answer_content(text: str) -> str | None:
    """The text inside the last ``<answer>...</answer>``, stripped; None without one."""
    found = _ANSWER.findall(text)
    return found[-1].strip() if found else None


def choice_letter(content: str | None, num_options: int = 4) -> tuple[str | None, bool]:
    """(letter, exact) from an answer: exact when the answer is the letter alone.

    ``"B"``, ``"B."``, ``"(B)"`` are exact; ``"B. Insular Cortex"`` gives ``("B", False)``;
    an answer naming two option letters, or none, gives ``(None, False)``.
    """
    if content is None:
        return None, False
    options = {chr(ord("A") + i) for i in range(max(1, min(num_options, 26)))}
    stripped = content.strip().strip("().:[] ")
    if stripped in options:
        return stripped, True
    letters = {m for m in _LETTER.findall(content) if m in options}
    if len(letters) == 1:
        return letters.pop(), False
    return None, False


def parse_box(content: str | None) -> np.ndarray | None:
    """The first run of exactly four numbers written as a box (``[x1, y1, x2, y2]``,
    ``(x1,y1),(x2,y2)``).

    A run is part of a longer list when a number joins it at either end with only spaces, a
    comma or a semicolon between (``[1, 2, 3, 4, 5]`` is not a box, nor any four of it); a
    bracket ends a list, so in ``Box 1 [10, 20, 30, 40]`` the box is ``[10, 20, 30, 40]``.
    Returns None when no such run exists, or the first one is not finite or degenerate
    (x2 <= x1 or y2 <= y1).
    """
    if content is None:
        return None
    for number in re.finditer(_NUMBER, content):
        match = _FOUR_NUMBERS.match(content, number.start())
        if match is None or _NUMBER_BEFORE.search(content[: number.start()]):
            continue
        if _MORE_NUMBERS.match(content, match.end()):
            continue
        try:
            box = np.array([float(v) for v in match.groups()], dtype=np.float64)
        except ValueError:
            return None
        if not np.all(np.isfinite(box)) or box[2] <= box[0] or box[3] <= box[1]:
            return None
        return box
    return None
