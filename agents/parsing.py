"""Model text → typed outputs: the SET answer, the perceiver's description, closed-set and yes/no answers.

Every function here is total (any str in, a value out, never an exception): the graph parses every call,
including truncated, looping and adversarial text, and a bad answer must become a recorded problem and a
zero format reward, not a crashed rollout. The regexes have no nested quantifiers and every scan is linear,
so 100 KB of junk costs milliseconds.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple, TypeVar

from pydantic import BaseModel

from emo_r3.prompts.label_sets import Arousal, LabelSet, Valence

# One regex finds every structural token. Step tags tolerate whitespace around "<", "/" and ">" (the
# reference check deletes it) and any case; "\boxed{" is a token too, because it ends a step whose content
# runs on without a closing tag. "step01" is not step 1 (the reference would not accept it either), nor is
# "ſtep1" ("ſ" matches "s" under Unicode case folding); whitespace stays Unicode, as in the reference.
_TOKEN = re.compile(r"<\s*(/\s*)?[Ss][Tt][Ee][Pp]([1-9][0-9]{0,8})\s*>|\\boxed\{")
_BOX = "\\boxed{"
_BRACE = re.compile(r"[{}]")
_MAX_LABEL_CHARS = 100  # a longer box is prose, not a label: don't normalise it, quote it shortened
_VALENCE_WORDS: dict[str, Valence] = {
    "positive": "positive", "pleasant": "positive",
    "negative": "negative", "unpleasant": "negative",
    "neutral": "neutral",
}  # fmt: skip
_AROUSAL_WORDS: dict[str, Arousal] = {"high": "high", "intense": "high", "low": "low"}
# ASCII matching: under Unicode IGNORECASE "poſitive" or "hıgh" would match, and they are not dictionary keys.
_VALENCE = re.compile(r"\b(?:positive|pleasant|negative|unpleasant|neutral)\b", re.IGNORECASE | re.ASCII)
_AROUSAL = re.compile(r"\b(?:high|intense|low)\b", re.IGNORECASE | re.ASCII)
# Characters a closed-set answer may carry around the word itself: quotes, markdown, a final period.
_ANSWER_EDGE = string.punctuation + string.whitespace + "“”‘’«»„‚‹›…"
_YES_NO: dict[str, Literal["yes", "no"]] = {"yes": "yes", "no": "no"}

_T = TypeVar("_T")


class SETParse(BaseModel, frozen=True):
    """What a SET answer says, and why it falls short of the format (if it does)."""

    steps: dict[int, str]
    boxed: str | None
    label: str | None
    valence: Valence | None
    arousal: Arousal | None
    format_ok: bool
    problems: list[str]


class PerceptionParse(BaseModel, frozen=True):
    """The perceiver's scene description (its step 1) and whether it came in the asked-for tag."""

    text: str
    format_ok: bool
    problems: list[str]


class SETToken(NamedTuple):
    """One structural token of a SET answer: a `<stepK>` / `</stepK>` tag or a `\\boxed{` opener, with its span."""

    start: int
    end: int
    step: int  # 0 for "\boxed{"
    closing: bool


def parse_set(
    text: str, label_set: LabelSet, *, required_steps: tuple[int, ...] = (1, 2, 3), truncated: bool = False
) -> SETParse:
    """Read steps, boxed label and step-3 affect from a SET answer; list every way it misses the format.

    `required_steps` is (2, 3) for the reasoner node, whose step 1 comes from the perceiver.
    `truncated` (finish_reason "length") fails the format: a cut-off answer must not earn the format reward.
    """
    tokens = set_tokens(text)
    steps, seen = _step_contents(text, tokens)
    problems = ["answer cut off at the length limit"] if truncated else []
    problems += _step_problems(required_steps, steps, seen)
    box_start = text.rfind(_BOX)
    boxed = _boxed_at(text, box_start) if box_start >= 0 else None
    label = label_set.normalize(boxed) if boxed and len(boxed) <= _MAX_LABEL_CHARS else None
    problems += _label_problems(box_start >= 0, boxed, label, label_set)
    layout_ok = _layout_ok(text, tokens, required_steps)
    if not layout_ok:
        problems.append(f"not in the {_layout_name(required_steps)} layout")
    step3 = steps.get(3, "")
    return SETParse(
        steps=steps,
        boxed=boxed,
        label=label,
        valence=_only_word(_VALENCE, _VALENCE_WORDS, step3),
        arousal=_only_word(_AROUSAL, _AROUSAL_WORDS, step3),
        format_ok=layout_ok and not truncated,
        problems=problems,
    )


def parse_perception(text: str, *, truncated: bool = False) -> PerceptionParse:
    """The perceiver's step 1; with no step1 tag the whole answer is the description (but flagged)."""
    steps, seen = _step_contents(text, set_tokens(text))
    problems = ["answer cut off at the length limit"] if truncated else []
    problems += _step_problems((1,), steps, seen)
    body = steps.get(1, "" if 1 in seen else text.strip())
    return PerceptionParse(text=body, format_ok=1 in steps and not truncated, problems=problems)


def parse_choice(text: str, options: Sequence[str]) -> str | None:
    """The option the answer *is* (ignoring case, spacing, quotes, punctuation around it), else None.

    No substring guessing: "not sure about awe" is not "awe". Options that read the same after this
    normalisation ("Awe", "awe.") make the answer ambiguous, so None.
    """
    key = _answer_key(text)
    if not key:
        return None
    matches = list(dict.fromkeys(option for option in options if _answer_key(option) == key))
    return matches[0] if len(matches) == 1 else None


def parse_yes_no(text: str) -> Literal["yes", "no"] | None:
    """A bare yes or no only. The reference code's substring test read "not"/"none" as "no": that is a bug."""
    return _YES_NO.get(_answer_key(text))


def set_format_ok(text: str, required_steps: tuple[int, ...] = (1, 2, 3)) -> bool:
    """The reference format check, generalised to any required steps (and tag case).

    Reference: after deleting whitespace around "<", ">" and "/", the whole text fullmatches
    `<step1>.*</step1>.*<step2>.*</step2>.*<step3>.*</step3>.*\\boxed\\{.*\\}.*` (DOTALL).
    """
    return _layout_ok(text, set_tokens(text), required_steps)


def set_tokens(text: str) -> list[SETToken]:
    """Every step tag and box opener in `text`, in order (the strict format check and the graded reward read these)."""
    tokens = []
    for m in _TOKEN.finditer(text):
        tokens.append(SETToken(m.start(), m.end(), int(m[2]) if m[2] else 0, m[1] is not None))
    return tokens


def _step_contents(text: str, tokens: list[SETToken]) -> tuple[dict[int, str], set[int]]:
    """Each step's first non-empty content, and the steps whose opening tag appears at all.

    The first non-empty occurrence wins so that a repetition loop of empty tags cannot hide real content.
    """
    contents: dict[int, str] = {}
    seen: set[int] = set()
    for i, token in enumerate(tokens):
        if token.step == 0 or token.closing or token.step in contents:
            continue
        seen.add(token.step)
        content = _content_after(text, tokens, i)
        if content:
            contents[token.step] = content
    return contents, seen


def _content_after(text: str, tokens: list[SETToken], i: int) -> str:
    """Content of the step opened by tokens[i]: inside its tags, else after its closing tag (models often
    write `<step2></step2> I feel calm`); an unclosed tag runs to the next tag or box."""
    opening = tokens[i]
    following = tokens[i + 1] if i + 1 < len(tokens) else None
    inside = text[opening.end : following.start if following else len(text)].strip()
    if inside or following is None or not (following.closing and following.step == opening.step):
        return inside
    after_end = tokens[i + 2].start if i + 2 < len(tokens) else len(text)
    return text[following.end : after_end].strip()


def _step_problems(required_steps: tuple[int, ...], steps: dict[int, str], seen: set[int]) -> list[str]:
    return [
        f"step{step} is empty" if step in seen else f"step{step} missing"
        for step in required_steps
        if step not in steps
    ]


def _boxed_at(text: str, start: int) -> str | None:
    """Stripped content of the "\\boxed{" at `start` up to its balancing "}", None if it never closes.

    The caller passes the last box: like the reference extraction (mathruler's), an earlier closed box does
    not stand in for a final one cut off mid-label.
    """
    body = start + len(_BOX)
    depth = 0
    for brace in _BRACE.finditer(text, body):
        if brace[0] == "{":
            depth += 1
        elif depth:
            depth -= 1
        else:
            return text[body : brace.start()].strip()
    return None


def _label_problems(has_box: bool, boxed: str | None, label: str | None, label_set: LabelSet) -> list[str]:
    if not has_box:
        return ["no \\boxed{} label"]
    if boxed is None:
        return ["the last \\boxed{ is never closed"]
    if not boxed:
        return ["empty \\boxed{}"]
    if label is None:
        shown = boxed if len(boxed) <= 40 else boxed[:37] + "..."
        return [f"label {shown!r} is not in {label_set.name}"]
    return []


def _layout_ok(text: str, tokens: list[SETToken], required_steps: tuple[int, ...]) -> bool:
    """Linear equivalent of the reference fullmatch: the text opens with the first expected tag (leading
    whitespace is deleted by the reference only before a "<"), the other tags and the box follow in order
    (for literals joined by `.*`, taking each one's earliest occurrence decides the match exactly), and a
    "}" comes somewhere after the box."""
    expected = [(step, closing) for step in required_steps for closing in (False, True)] + [(0, False)]
    first = tokens[0] if tokens else None
    if first is None or (first.step, first.closing) != expected[0]:
        return False
    if first.start != (len(text) - len(text.lstrip()) if first.step else 0):
        return False
    matched = 0
    for token in tokens:
        if (token.step, token.closing) == expected[matched]:
            matched += 1
            if matched == len(expected):
                return text.find("}", token.end) >= 0
    return False


def _layout_name(required_steps: tuple[int, ...]) -> str:
    return " … ".join([*(f"<step{step}>…</step{step}>" for step in required_steps), "\\boxed{}"])


def _only_word(pattern: re.Pattern[str], words: Mapping[str, _T], text: str) -> _T | None:
    """The one value the text names; None when it names none or several ("positive or negative")."""
    found = {words[word.lower()] for word in pattern.findall(text)}
    return found.pop() if len(found) == 1 else None


def _answer_key(text: str) -> str:
    return " ".join(text.split()).strip(_ANSWER_EDGE).casefold()
