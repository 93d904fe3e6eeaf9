"""GenEval-style task specs: the vocabulary, the prompt templates, and their inverse.

GenEval (Ghosh et al. 2023) checks six kinds of prompt, each a template over the 80 COCO
classes, 10 colours, counts and 4 relations. We write prompts from the same kinds of
template (make_prompts.py) and parse any such prompt back into what the image must show,
so the reward needs no side file; GenEval-format metadata ("include"/"exclude") given
with a prompt takes precedence over parsing.

    single_object  a photo of a bench                      -> 1 bench
    two_object     a photo of a cat and a cup              -> 1 cat, 1 cup
    counting       a photo of three apples                 -> 3 apples, and not 4
    colors         a photo of a red car                    -> 1 car, red
    position       a photo of a dog right of a tv          -> 1 tv, 1 dog right of the tv
    color_attr     a photo of a blue bus and a green cake  -> 1 bus blue, 1 cake green
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "computer mouse",
    "tv remote", "computer keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
)
# Irregular plurals; every other class takes "s".
_PLURAL_EXCEPTIONS = {
    "person": "people", "bus": "buses", "skis": "pairs of skis", "sheep": "sheep",
    "knife": "knives", "sandwich": "sandwiches", "couch": "couches", "bench": "benches",
    "wine glass": "wine glasses", "toothbrush": "toothbrushes",
    "scissors": "pairs of scissors", "computer mouse": "computer mice",
}
COLORS: tuple[str, ...] = (
    "red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white",
)
COUNT_WORDS: dict[int, str] = {2: "two", 3: "three", 4: "four"}
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
TAGS: tuple[str, ...] = (
    "single_object", "two_object", "counting", "colors", "position", "color_attr",
)


def plural(name: str) -> str:
    return _PLURAL_EXCEPTIONS.get(name, name + "s")


def with_article(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


@dataclass(frozen=True)
class ObjectReq:
    """One required object group: `count` instances of `name`, optionally of a colour,
    optionally in `relation` to the group at index `ref` of the same spec."""

    name: str
    count: int = 1
    color: str | None = None
    relation: str | None = None
    ref: int | None = None


@dataclass(frozen=True)
class TaskSpec:
    tag: str
    include: tuple[ObjectReq, ...]
    # (name, n): the image fails if it shows n or more of `name` (exact counts).
    exclude: tuple[tuple[str, int], ...] = field(default=())


def make_prompt(spec: TaskSpec) -> str:
    """The prompt for a spec made by `spec_*` below (the inverse of parse_prompt)."""
    inc = spec.include
    if spec.tag == "single_object":
        return "a photo of " + with_article(inc[0].name)
    if spec.tag == "two_object":
        return f"a photo of {with_article(inc[0].name)} and {with_article(inc[1].name)}"
    if spec.tag == "counting":
        return f"a photo of {COUNT_WORDS[inc[0].count]} {plural(inc[0].name)}"
    if spec.tag == "colors":
        return f"a photo of {with_article(inc[0].color + ' ' + inc[0].name)}"
    if spec.tag == "position":
        subject, ref = inc[1], inc[0]
        return f"a photo of {with_article(subject.name)} {subject.relation} {with_article(ref.name)}"
    if spec.tag == "color_attr":
        first = with_article(f"{inc[0].color} {inc[0].name}")
        return f"a photo of {first} and {with_article(f'{inc[1].color} {inc[1].name}')}"
    raise ValueError(f"unknown GenEval tag {spec.tag!r}; valid: {', '.join(TAGS)}")


def spec_single(name: str) -> TaskSpec:
    return TaskSpec("single_object", (ObjectReq(name),))


def spec_two(a: str, b: str) -> TaskSpec:
    return TaskSpec("two_object", (ObjectReq(a), ObjectReq(b)))


def spec_count(name: str, n: int) -> TaskSpec:
    return TaskSpec("counting", (ObjectReq(name, count=n),), ((name, n + 1),))


def spec_color(name: str, color: str) -> TaskSpec:
    return TaskSpec("colors", (ObjectReq(name, color=color),))


def spec_position(subject: str, relation: str, ref: str) -> TaskSpec:
    return TaskSpec("position", (ObjectReq(ref), ObjectReq(subject, relation=relation, ref=0)))


def spec_color_attr(a: str, color_a: str, b: str, color_b: str) -> TaskSpec:
    return TaskSpec("color_attr", (ObjectReq(a, color=color_a), ObjectReq(b, color=color_b)))


def _alternation(words: list[str]) -> str:
    # Longest first, so "hot dog" wins over "dog" and "computer mouse" over nothing shorter.
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_OBJ = f"(?:an?) ({_alternation(list(COCO_CLASSES))})"
_COL = f"({_alternation(list(COLORS))})"
_COLOBJ = f"(?:an?) {_COL} ({_alternation(list(COCO_CLASSES))})"
_PLURALS = {plural(c): c for c in COCO_CLASSES}
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (tag, re.compile(rf"a photo of {body}\.?", re.IGNORECASE))
    for tag, body in (
        ("color_attr", f"{_COLOBJ} and {_COLOBJ}"),
        ("position", f"{_OBJ} ({_alternation(list(RELATIONS))}) {_OBJ}"),
        ("two_object", f"{_OBJ} and {_OBJ}"),
        ("counting", f"({_alternation(list(COUNT_WORDS.values()))}) ({_alternation(list(_PLURALS))})"),
        ("colors", _COLOBJ),
        ("single_object", _OBJ),
    )
)


def parse_prompt(prompt: str) -> TaskSpec | None:
    """The spec a GenEval-style prompt asks for, or None if it matches no template."""
    text = " ".join(prompt.strip().lower().split())
    for tag, pattern in _PATTERNS:
        m = pattern.fullmatch(text)
        if m is None:
            continue
        g = m.groups()
        if tag == "color_attr":
            return spec_color_attr(g[1], g[0], g[3], g[2])
        if tag == "position":
            return spec_position(g[0], g[1], g[2])
        if tag == "two_object":
            return spec_two(g[0], g[1])
        if tag == "counting":
            number = {w: n for n, w in COUNT_WORDS.items()}[g[0]]
            return spec_count(_PLURALS[g[1]], number)
        if tag == "colors":
            return spec_color(g[1], g[0])
        return spec_single(g[0])
    return None


def spec_from_metadata(meta: dict) -> TaskSpec:
    """GenEval's metadata format: {"tag", "include": [{"class", "count", "color"?,
    "position"?: [relation, index]}], "exclude": [{"class", "count"}]}."""
    include = []
    for item in meta["include"]:
        relation, ref = item.get("position") or (None, None)
        include.append(
            ObjectReq(item["class"], int(item.get("count", 1)), item.get("color"), relation, ref)
        )
    exclude = tuple((item["class"], int(item["count"])) for item in meta.get("exclude", []))
    return TaskSpec(meta.get("tag", "custom"), tuple(include), exclude)
