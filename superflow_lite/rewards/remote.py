"""A reward computed by another process or machine, over HTTP + JSON.

Use it to keep a large reward model off the training GPU, or to score with a model whose
dependencies clash with this environment. The server side is serve.py; any server that
speaks this protocol works:

    GET  {url}/info   -> {"name": str, "low": float, "high": float}
    POST {url}/score  <- {"prompts": [str], "metadata": [dict],
                          "images": [base64 str], "image_format": "png" | "jpeg"}
                      -> {"scores": [float], "extras": {name: [float]}}
                         or, on failure, HTTP 4xx/5xx with {"error": str}
"""
from __future__ import annotations

import base64
import io
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Sequence

import numpy as np
from PIL import Image

from .base import Reward, RewardOutput, RewardUnavailable, check_finite_scores

IMAGE_FORMATS = ("png", "jpeg")


def encode_image(image: Image.Image, image_format: str = "png", jpeg_quality: int = 95) -> str:
    buffer = io.BytesIO()
    if image_format == "jpeg":
        image.convert("RGB").save(buffer, format="JPEG", quality=jpeg_quality)
    else:
        image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_image(data: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    return image


def _json_default(value: Any) -> Any:
    # Metadata built by the trainer may hold numpy scalars/arrays; JSON has lists and numbers.
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"metadata value of type {type(value).__name__} is not JSON-serialisable")


def encode_request(
    images: Sequence[Image.Image], prompts: Sequence[str], metadata: Sequence[dict],
    image_format: str = "png", jpeg_quality: int = 95,
) -> bytes:
    payload = {
        "prompts": list(prompts),
        "metadata": list(metadata),
        "images": [encode_image(im, image_format, jpeg_quality) for im in images],
        "image_format": image_format,
    }
    return json.dumps(payload, default=_json_default).encode("utf-8")


def decode_request(body: bytes) -> tuple[list[Image.Image], list[str], list[dict]]:
    """Parse a /score request; ValueError with the reason when it is malformed."""
    try:
        payload = json.loads(body)
        images = [decode_image(s) for s in payload["images"]]
        prompts = [str(p) for p in payload["prompts"]]
        metadata = payload.get("metadata") or [{} for _ in prompts]
    except (ValueError, KeyError, TypeError, OSError) as err:
        raise ValueError(f"bad /score request: {type(err).__name__}: {err}") from err
    if not (len(images) == len(prompts) == len(metadata)):
        raise ValueError(
            f"bad /score request: {len(images)} images, {len(prompts)} prompts, {len(metadata)} metadata"
        )
    return images, prompts, metadata


def encode_response(out: RewardOutput) -> bytes:
    payload = {
        "scores": np.asarray(out.scores, dtype=np.float64).tolist(),
        "extras": {k: np.asarray(v, dtype=np.float64).tolist() for k, v in out.extras.items()},
    }
    return json.dumps(payload).encode("utf-8")


def decode_response(body: bytes, batch: int) -> RewardOutput:
    payload = json.loads(body)
    scores = np.asarray(payload["scores"], dtype=np.float32)
    if scores.shape != (batch,):
        raise ValueError(f"remote reward returned {scores.shape[0]} scores for {batch} images")
    extras = {k: np.asarray(v, dtype=np.float32) for k, v in payload.get("extras", {}).items()}
    return RewardOutput(scores, extras)


class RemoteReward(Reward):
    """Options:
      url           base URL of the server, e.g. http://127.0.0.1:8000 (required)
      timeout       seconds per HTTP request (scoring a batch of big images on a busy GPU
                    can take tens of seconds)
      retries       extra attempts after a connection failure or a 5xx, with 1 s, 2 s, 4 s... waits
      image_format  png (lossless, as the policy made it) | jpeg (~10x smaller on the wire)
      jpeg_quality
      low, high     declared range; None = ask the server's /info when the reward is built
    """

    name = "remote"

    def __init__(
        self,
        device: str = "cpu",
        url: str | None = None,
        timeout: float = 120.0,
        retries: int = 2,
        image_format: str = "png",
        jpeg_quality: int = 95,
        low: float | None = None,
        high: float | None = None,
    ):
        super().__init__(device)
        if not url:
            raise ValueError(
                "the 'remote' reward needs reward.options.remote.url, e.g. http://127.0.0.1:8000 "
                "(start a server with: python -m superflow_lite.rewards.serve --reward NAME --port 8000)"
            )
        if image_format not in IMAGE_FORMATS:
            raise ValueError(f"reward.options.remote.image_format: {image_format!r} is not one of {IMAGE_FORMATS}")
        self.url = url.rstrip("/")
        self.timeout, self.retries = float(timeout), int(retries)
        self.image_format, self.jpeg_quality = image_format, int(jpeg_quality)
        self._opener = _opener_for(self.url)
        self.remote_name: str | None = None
        self.range_origin = "reward.options.remote.low and .high"  # where the range was declared
        if low is None or high is None:
            # The range must be known now: a weighted sum and the trackers read it before
            # the first batch is scored.
            self.remote_name, info_low, info_high = self._info()
            self.range_origin = f"{self.url}/info"
            if low is not None or high is not None:
                self.range_origin += " and reward.options.remote"
            low = info_low if low is None else low
            high = info_high if high is None else high
        self.low, self.high = float(low), float(high)

    def _info(self) -> tuple[str, float, float]:
        """The server's name and declared range, from GET /info; ValueError saying what it answered instead."""
        body = self._request("/info", None)
        try:
            info = json.loads(body)
            return str(info.get("name", "?")), float(info["low"]), float(info["high"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ValueError(f"remote reward server {self.url}/info answered {body[:80]!r}, not "
                             '{"name": str, "low": float, "high": float}; is it a superflow_lite reward server?') from None

    def _request(self, path: str, body: bytes | None) -> bytes:
        """GET (body None) or POST JSON, retrying connection failures and 5xx answers."""
        url = self.url + path
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(2.0 ** (attempt - 1), 30.0))
            request = urllib.request.Request(
                url, data=body, headers={"Content-Type": "application/json"},
                method="GET" if body is None else "POST",
            )
            try:
                with self._opener.open(request, timeout=self.timeout) as response:
                    return response.read()
            except urllib.error.HTTPError as err:
                detail = _error_detail(err)
                if err.code < 500:
                    raise RuntimeError(f"remote reward {url}: HTTP {err.code}: {detail}") from err
                last = RuntimeError(f"HTTP {err.code}: {detail}")
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                last = err
        raise RewardUnavailable(
            f"remote reward server {url} did not answer after {self.retries + 1} attempt(s) "
            f"({type(last).__name__}: {last}). Is it running? Start one with: "
            f"python -m superflow_lite.rewards.serve --reward NAME --host HOST --port PORT"
        )

    def score(
        self, images: Sequence[Image.Image], prompts: Sequence[str], metadata: Sequence[dict]
    ) -> RewardOutput:
        body = encode_request(images, prompts, metadata, self.image_format, self.jpeg_quality)
        out = decode_response(self._request("/score", body), len(images))
        # Before the clip: clipping would turn +inf into `high` and train on a lie.
        check_finite_scores(f"remote ({self.url})", out.scores, prompts)
        out.scores = np.clip(out.scores, self.low, self.high)
        return out


def _opener_for(url: str) -> urllib.request.OpenerDirector:
    # A loopback server must never be reached through an HTTP(S)_PROXY from the environment.
    host = urllib.parse.urlsplit(url).hostname or ""
    if host in ("127.0.0.1", "localhost", "::1"):
        return urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener()


def _error_detail(err: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(err.read()).get("error", err.reason))
    except (ValueError, AttributeError, OSError):
        return str(err.reason)
