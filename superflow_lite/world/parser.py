"""Caption -> SceneSpec: the constraints a shapes-world prompt puts on its image.

Understands what shapes.caption writes, and the small variations people type:
an optional "a photo of"/"an image of" prefix, "one"/"an" for a single object, an omitted
colour (any colour), "left of" without "to the", and "X and Y" for two objects.
"""
from __future__ import annotations

import re

from .shapes import COLOURS, COUNT_WORDS, RELATION_PHRASES, SHAPES, ObjectSpec, SceneSpec

_COUNTS: dict[str, int] = {word: n for n, word in COUNT_WORDS.items()} | {"an": 1, "one": 1}
_PREFIX = re.compile(r"^(?:a|an)\s+(?:photo|picture|image)\s+of\s+")
_COUNT = "|".join(sorted(_COUNTS, key=len, reverse=True))
_COLOUR = "|".join(COLOURS)
_SHAPE = "|".join(SHAPES)
_OBJECT = re.compile(rf"^(?P<count>{_COUNT})\s+(?:(?P<colour>{_COLOUR})\s+)?(?P<shape>{_SHAPE})(?P<plural>s?)$")
# Longest phrases first, so "to the left of" is not read as "left of" with junk before it.
_RELATIONS: list[tuple[str, str]] = sorted(
    [(phrase, rel) for rel, phrase in RELATION_PHRASES.items()]
    + [(rel, rel) for rel in RELATION_PHRASES if rel != RELATION_PHRASES[rel]],
    key=lambda pr: len(pr[0]),
    reverse=True,
)


class CaptionError(ValueError):
    """The caption is not one the shapes world understands."""


def _normalise(text: str) -> str:
    text = re.sub(r"[^a-z ]", " ", text.lower())
    return re.sub(r"\s+", " ", text).strip()


def parse_object(phrase: str) -> ObjectSpec:
    """ "two red circles" -> ObjectSpec("circle", "red", 2)."""
    m = _OBJECT.match(phrase)
    if m is None:
        raise CaptionError(f"cannot read object phrase {phrase!r}")
    count = _COUNTS[m["count"]]
    if (count > 1) != bool(m["plural"]):
        raise CaptionError(f"count and plural disagree in {phrase!r}")
    return ObjectSpec(shape=m["shape"], colour=m["colour"], count=count)


def _split_relation(body: str) -> tuple[str, str, str] | None:
    for phrase, rel in _RELATIONS:
        left, sep, right = body.partition(f" {phrase} ")
        if sep:
            return left, rel, right
    return None


def parse_caption(text: str) -> SceneSpec:
    """Parse a caption into constraints; raises CaptionError if it is not a world caption."""
    body = _PREFIX.sub("", _normalise(text))
    relation = _split_relation(body)
    if relation is not None:
        left, rel, right = relation
        a, b = parse_object(left), parse_object(right)
        if a.count != 1 or b.count != 1:
            raise CaptionError(f"relations need single objects: {text!r}")
        return SceneSpec(objects=(a, b), relation=rel)
    objects = tuple(parse_object(part) for part in body.split(" and "))
    if sum(o.count for o in objects) > 4:
        raise CaptionError(f"more than 4 objects asked for in {text!r}")
    return SceneSpec(objects=objects)
