"""The remote reward and its server, together on 127.0.0.1."""
from __future__ import annotations

import json
import socket
import threading
from typing import Iterator, Sequence

import numpy as np
import pytest
from PIL import Image

from superflow_lite.rewards.base import Reward, RewardOutput, RewardUnavailable
from superflow_lite.rewards.jpeg import jpeg_size_kib
from superflow_lite.rewards.registry import build_reward
from superflow_lite.rewards.remote import decode_request, encode_image, encode_request
from superflow_lite.rewards.serve import RewardServer, build_server, main, make_server


class MeanBrightness(Reward):
    """Mean pixel value in [0, 1]; metadata {"fail": true} makes it raise (a scoring bug)."""

    name = "mean_brightness"

    def score(self, images: Sequence[Image.Image], prompts, metadata) -> RewardOutput:
        if any(m.get("fail") for m in metadata):
            raise RuntimeError("boom")
        if any(not p for p in prompts):
            raise ValueError("empty prompt")
        values = np.array([np.asarray(im.convert("L"), dtype=np.float32).mean() / 255 for im in images])
        return RewardOutput(values.astype(np.float32), {"len": np.array([len(p) for p in prompts], np.float32)})


def _serve(server: RewardServer) -> Iterator[RewardServer]:
    # A short poll interval: shutdown() waits up to one interval (0.5 s by default).
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture()
def server() -> Iterator[RewardServer]:
    yield from _serve(make_server(MeanBrightness(), "127.0.0.1", 0))


def _images() -> list[Image.Image]:
    return [Image.new("RGB", (16, 16), (v, v, v)) for v in (0, 51, 255)]


@pytest.mark.parametrize("image_format", ["png", "jpeg"])
def test_round_trip(server: RewardServer, image_format: str) -> None:
    remote = build_reward({"remote": 1.0}, "cpu", {"remote": {"url": server.url, "image_format": image_format}})
    assert (remote.low, remote.high) == (0.0, 1.0) and remote.remote_name == "mean_brightness"
    out = remote(_images(), ["a", "bb", "ccc"], [{"i": np.int64(1)}, {}, {"x": [1, 2]}])
    np.testing.assert_allclose(out.scores, [0.0, 0.2, 1.0], atol=0.01)
    np.testing.assert_array_equal(out.extras["len"], [1, 2, 3])


def test_declared_range_skips_info_and_clips(server: RewardServer) -> None:
    remote = build_reward({"remote": 1.0}, "cpu", {"remote": {"url": server.url, "low": 0.1, "high": 0.5}})
    assert remote.remote_name is None
    assert remote(_images(), ["a", "b", "c"]).scores.tolist() == pytest.approx([0.1, 0.2, 0.5], abs=0.01)


def test_server_errors_reach_the_client(server: RewardServer) -> None:
    remote = build_reward({"remote": 1.0}, "cpu", {"remote": {"url": server.url, "retries": 0}})
    with pytest.raises(RuntimeError, match="HTTP 400: empty prompt"):
        remote(_images()[:1], [""])
    with pytest.raises(RewardUnavailable, match="HTTP 500: RuntimeError: boom"):
        remote(_images()[:1], ["a"], [{"fail": True}])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_server_is_a_clear_error() -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(RewardUnavailable, match=r"did not answer after 2 attempt.*superflow_lite.rewards.serve"):
        build_reward({"remote": 1.0}, "cpu", {"remote": {"url": url, "retries": 1, "timeout": 2}})
    with pytest.raises(ValueError, match="needs reward.options.remote.url"):
        build_reward({"remote": 1.0})


def test_request_codec_validates() -> None:
    body = encode_request(_images(), ["a", "b", "c"], [{}, {}, {}], "jpeg")
    images, prompts, metadata = decode_request(body)
    assert [im.size for im in images] == [(16, 16)] * 3 and prompts == ["a", "b", "c"]
    with pytest.raises(ValueError, match="bad /score request"):
        decode_request(b'{"images": ["not base64 png"], "prompts": ["a"]}')
    one_image = json.dumps({"images": [encode_image(_images()[0])], "prompts": ["a", "b"]}).encode()
    with pytest.raises(ValueError, match="1 images, 2 prompts"):
        decode_request(one_image)


def test_cli_serves_a_registered_reward() -> None:
    # build_server is main() without the blocking loop: same parsing, building and binding.
    served = build_server(["--reward", "jpeg_compressibility", "--port", "0", "--options", '{"resolution": 64}'])
    for live in _serve(served):
        remote = build_reward({"remote": 1.0}, "cpu", {"remote": {"url": live.url}})
        assert (remote.low, remote.high) == (live.reward.low, live.reward.high)
        images = _images()
        out = remote(images, ["x"] * 3)
        np.testing.assert_allclose(out.scores, [-jpeg_size_kib(im) for im in images], rtol=1e-5)


def test_cli_rejects_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--reward", "no_such_reward", "--port", "0"]) == 2
    assert "unknown reward 'no_such_reward'; available:" in capsys.readouterr().err
    assert main(["--reward", "ocr", "--port", "0", "--options", "{bad json"]) == 2
    assert "--options is not valid JSON" in capsys.readouterr().err
