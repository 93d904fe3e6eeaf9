"""OCR reward: the edit-distance score, and the real RapidOCR engine on PIL-rendered text."""
from __future__ import annotations

import pytest
from PIL import Image, ImageDraw, ImageFont

from superflow_lite.rewards.ocr import (
    OcrReward, edit_distance, extract_target_text, normalise_text, text_match_score,
)


@pytest.mark.parametrize(
    "a, b, expected",
    [("", "", 0), ("abc", "", 3), ("kitten", "sitting", 3), ("flaw", "lawn", 2), ("same", "same", 0)],
)
def test_edit_distance(a: str, b: str, expected: int) -> None:
    assert edit_distance(a, b) == expected
    assert edit_distance(b, a) == expected


def test_extract_and_normalise() -> None:
    assert extract_target_text('A sign that reads "OPEN Late" at night') == "OPEN Late"
    assert extract_target_text("no quotes here") == ""
    assert extract_target_text('one "unclosed quote') == ""
    assert normalise_text(" Open  LATE\n") == "openlate"


def test_text_match_score() -> None:
    assert text_match_score("Open Late", "OPENLATE") == 1.0
    # Extra text around the target is not penalised (Flow-GRPO's rule).
    assert text_match_score("open", "we are open today") == 1.0
    assert text_match_score("hello", "hellp") == pytest.approx(0.8)
    # Distance is capped at the target length, so the score never goes below 0.
    assert text_match_score("hi", "a much longer unrelated text") == 0.0
    assert text_match_score("", "anything") == 0.0


def _render(text: str) -> Image.Image:
    image = Image.new("RGB", (384, 112), "white")
    font = ImageFont.load_default(size=44)
    ImageDraw.Draw(image).text((16, 30), text, fill="black", font=font)
    return image


@pytest.fixture(scope="module")
def reward() -> OcrReward:
    pytest.importorskip("rapidocr_onnxruntime")
    return OcrReward()  # one engine for the module: loading it costs ~1 s


def test_ocr_reward_reads_rendered_text(reward: OcrReward) -> None:
    images = [_render("HELLO WORLD"), _render("HELLO WORLD"), Image.new("RGB", (64, 64), "white")]
    prompts = [
        'A poster that says "Hello World"',
        'A poster that says "Quantum Giraffe"',
        'A poster that says "Hello World"',
    ]
    out = reward(images, prompts)
    assert out.scores.dtype.name == "float32" and out.scores.shape == (3,)
    assert ((out.scores >= reward.low) & (out.scores <= reward.high)).all()
    assert out.scores[0] >= 0.9, out.scores  # right text: near 1
    assert out.scores[1] <= 0.3, out.scores  # wrong text: low
    assert out.scores[2] == 0.0  # blank image reads nothing
    assert out.extras["exact"][0] == 1.0 and out.extras["exact"][1] == 0.0


def test_metadata_text_overrides_prompt(reward: OcrReward) -> None:
    out = reward([_render("OPEN")], ['a sign "CLOSED"'], [{"text": "open"}])
    assert out.scores[0] == 1.0
