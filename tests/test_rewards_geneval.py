"""GenEval reward: prompt specs, the scoring rules on synthetic detections, and the OWLv2 path."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from superflow_lite.rewards.geneval import GenEvalReward, task_spec
from superflow_lite.rewards.geneval_scoring import (
    Detection, box_color, evaluate, non_max_suppression, relations,
)
from superflow_lite.rewards.geneval_spec import (
    TAGS, ObjectReq, make_prompt, parse_prompt, spec_color, spec_color_attr, spec_count,
    spec_from_metadata, spec_position, spec_two,
)
from superflow_lite.rewards.prompt_sets import load_builtin_prompt_set
from superflow_lite.rewards.tiny import save_tiny_owlv2


def test_every_builtin_prompt_parses_back() -> None:
    train, test = load_builtin_prompt_set("geneval")
    tags = set()
    for prompt in train + test:
        spec = parse_prompt(prompt)
        assert spec is not None, prompt
        assert make_prompt(spec) == prompt
        tags.add(spec.tag)
    assert tags == set(TAGS)


def test_parse_examples() -> None:
    assert parse_prompt("a photo of three pairs of skis") == spec_count("skis", 3)
    assert parse_prompt("A photo of an orange orange.") == spec_color("orange", "orange")
    expected = spec_position("hot dog", "right of", "tv remote")
    assert parse_prompt("a photo of a hot dog right of a tv remote") == expected
    assert parse_prompt("a photo of a blue bus and a green cake") == spec_color_attr("bus", "blue", "cake", "green")
    assert parse_prompt("a photo of a dog and a cat") == spec_two("dog", "cat")
    assert parse_prompt("a cat sitting on a mat") is None
    with pytest.raises(ValueError, match="cannot tell"):
        task_spec("a cat sitting on a mat", {})


def test_metadata_takes_precedence() -> None:
    meta = {
        "tag": "position",
        "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1, "position": ["above", 0]}],
        "exclude": [{"class": "dog", "count": 2}],
    }
    spec = task_spec("anything at all", meta)
    assert spec == spec_from_metadata(meta)
    assert spec.include[1] == ObjectReq("dog", 1, None, "above", 0)
    assert spec.exclude == (("dog", 2),)


def _scene(boxes: list[tuple[str, tuple[int, int, int, int]]]) -> Image.Image:
    image = Image.new("RGB", (200, 200), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    for color, box in boxes:
        draw.rectangle(box, fill=color)
    return image


@pytest.mark.parametrize(
    "rgb, name",
    [((230, 20, 20), "red"), ((255, 150, 0), "orange"), ((250, 230, 30), "yellow"), ((30, 160, 40), "green"),
     ((30, 60, 220), "blue"), ((130, 30, 170), "purple"), ((255, 150, 200), "pink"), ((120, 70, 20), "brown"),
     ((10, 10, 10), "black"), ((245, 245, 245), "white")],
)
def test_box_color(rgb: tuple[int, int, int], name: str) -> None:
    image = _scene([(rgb, (50, 50, 150, 150))])
    assert box_color(image, (40, 40, 160, 160)) == name  # the gray margin is outside the central half


def test_relations() -> None:
    left, right = (0, 0, 40, 40), (100, 0, 140, 40)
    assert relations(left, right) == {"left of"}
    assert relations(right, left) == {"right of"}
    assert relations((0, 0, 40, 40), (0, 100, 40, 140)) == {"above"}
    assert relations((0, 0, 40, 40), (2, 2, 42, 42)) == set()  # inside the dead zone
    assert relations((0, 0, 40, 40), (100, 100, 140, 140)) == {"left of", "above"}


def test_nms_merges_duplicates_per_class() -> None:
    dets = [Detection("cat", 0.9, (0, 0, 10, 10)), Detection("cat", 0.5, (1, 1, 10, 10)),
            Detection("dog", 0.4, (1, 1, 10, 10)), Detection("cat", 0.3, (50, 50, 60, 60))]
    kept = non_max_suppression(dets, 0.5)
    assert [(d.name, d.score) for d in kept] == [("cat", 0.9), ("dog", 0.4), ("cat", 0.3)]


def test_evaluate_counting_partial_and_strict() -> None:
    spec = spec_count("apple", 3)  # checks: >= 3 apples, fewer than 4
    image = _scene([])
    apples = [Detection("apple", 0.9, (i * 30, 0, i * 30 + 20, 20)) for i in range(4)]
    exact = evaluate(spec, apples[:3], image)
    assert exact.strict and exact.partial == 1.0
    too_few = evaluate(spec, apples[:2], image)
    assert not too_few.strict and too_few.partial == 0.5
    too_many = evaluate(spec, apples, image)
    assert not too_many.strict and too_many.partial == 0.5 and "fewer than 4" in too_many.failures[0]


def test_evaluate_color_attr_uses_the_crops() -> None:
    spec = spec_color_attr("bus", "blue", "cake", "green")
    image = _scene([((30, 60, 220), (10, 10, 90, 90)), ((230, 20, 20), (110, 110, 190, 190))])
    dets = [Detection("bus", 0.8, (10, 10, 90, 90)), Detection("cake", 0.7, (110, 110, 190, 190))]
    verdict = evaluate(spec, dets, image)
    # 4 checks: bus found, bus blue, cake found, cake green (it is red).
    assert verdict.partial == 0.75 and not verdict.strict
    assert any("green cake" in f for f in verdict.failures)


def test_evaluate_position() -> None:
    spec = spec_position("dog", "right of", "cat")  # include: [cat, dog right of #0]
    image = _scene([])
    cat, dog_right = Detection("cat", 0.9, (0, 80, 40, 120)), Detection("dog", 0.9, (150, 80, 190, 120))
    assert evaluate(spec, [cat, dog_right], image).strict
    dog_left = Detection("dog", 0.9, (0, 0, 10, 10))
    wrong = evaluate(spec, [Detection("cat", 0.9, (150, 80, 190, 120)), dog_left], image)
    assert wrong.partial == pytest.approx(2 / 3) and not wrong.strict
    # Subject missing: its presence check and its position check both fail.
    assert evaluate(spec, [cat], image).partial == pytest.approx(1 / 3)


@pytest.fixture(scope="module")
def owl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("scipy")  # Owlv2's image processor resizes with scipy without torchvision
    return save_tiny_owlv2(tmp_path_factory.mktemp("tiny_owlv2"))


def test_owlv2_path_on_tiny_model(owl_dir: Path) -> None:
    # threshold 0: the random model's scores are ~0.5, so every box is kept and the
    # post-processing, NMS and evaluation all run for real.
    reward = GenEvalReward(model_name_or_path=str(owl_dir), threshold=0.0, batch_size=2)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)) for _ in range(3)]
    prompts = ["a photo of two dogs", "a photo of a red car and a blue cup", "a photo of a cat left of a dog"]
    out = reward(images, prompts)
    assert out.scores.shape == (3,) and out.scores.dtype == np.float32
    assert ((out.scores >= reward.low) & (out.scores <= reward.high)).all()
    assert set(np.unique(out.extras["strict"])) <= {0.0, 1.0}
    detections = reward.detect(images[:1], ["dog", "cat"])[0]
    assert detections and {d.name for d in detections} <= {"dog", "cat"}
    for det in detections:
        x0, y0, x1, y1 = det.box
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 48  # clipped to the image, not the padded square
