"""Serve any registered reward over HTTP for the 'remote' reward (protocol: remote.py).

    python -m superflow_lite.rewards.serve --reward pickscore --device cuda:1 --port 8000
    python -m superflow_lite.rewards.serve --reward ocr --options '{"min_confidence": 0.5}'

Binds 127.0.0.1 by default: the server runs whatever model it is given on any request, so
exposing it (--host 0.0.0.0) is a decision for a trusted network only. Requests are
scored one at a time (a lock), since reward models are not thread-safe; /info answers
while a batch is being scored.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Sequence

from .base import Reward, RewardUnavailable
from .registry import available_rewards, build_reward
from .remote import decode_request, encode_response

MAX_BODY_BYTES = 512 * 1024 * 1024  # ~2,000 PNG images of 512x512: far above any micro-batch


class RewardServer(ThreadingHTTPServer):
    daemon_threads = True  # a hung client must not keep the process alive at shutdown

    def __init__(self, reward: Reward, host: str, port: int, verbose: bool = False):
        super().__init__((host, port), _Handler)
        self.reward = reward
        self.lock = threading.Lock()
        self.verbose = verbose

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class _Handler(BaseHTTPRequestHandler):
    server: RewardServer

    def _send(self, code: int, payload: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _error(self, code: int, message: str) -> None:
        self._send(code, json.dumps({"error": message}).encode("utf-8"))

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path.rstrip("/") != "/info":
            self._error(404, f"unknown path {self.path!r}; use GET /info or POST /score")
            return
        reward = self.server.reward
        info = {"name": reward.name, "low": reward.low, "high": reward.high}
        self._send(200, json.dumps(info).encode("utf-8"))

    def do_POST(self) -> None:  # noqa: N802
        if self.path.rstrip("/") != "/score":
            self._error(404, f"unknown path {self.path!r}; use POST /score")
            return
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_BODY_BYTES:
            self._error(413 if length else 411, f"body of {length} bytes; send 1..{MAX_BODY_BYTES}")
            return
        try:
            images, prompts, metadata = decode_request(self.rfile.read(length))
        except ValueError as err:
            self._error(400, str(err))
            return
        try:
            with self.server.lock:
                out = self.server.reward(images, prompts, metadata)
        except ValueError as err:  # the reward rejected its input (e.g. an unparseable prompt)
            self._error(400, str(err))
            return
        except Exception as err:  # noqa: BLE001 - report any scoring failure to the client
            self._error(500, f"{type(err).__name__}: {err}")
            return
        self._send(200, encode_response(out))

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (stdlib signature)
        if self.server.verbose:
            super().log_message(format, *args)


def make_server(reward: Reward, host: str = "127.0.0.1", port: int = 0, verbose: bool = False) -> RewardServer:
    """A bound, not yet serving server; port 0 picks a free port (see .url)."""
    return RewardServer(reward, host, port, verbose)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m superflow_lite.rewards.serve", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--reward", required=True, help=f"one of: {', '.join(available_rewards())}")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="0 = any free port (printed)")
    parser.add_argument("--device", default="cpu", help="device the reward model runs on, e.g. cuda:1")
    parser.add_argument("--options", default="{}", help="the reward's options as JSON")
    parser.add_argument("--no-preload", action="store_true", help="load the model on the first request")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    return parser.parse_args(argv)


def build_server(argv: Sequence[str] | None = None) -> RewardServer:
    """The CLI minus the serving loop: parse, build the reward, load it, bind.

    Raises ValueError / RewardUnavailable with the reason when any step fails.
    """
    args = _parse_args(argv)
    try:
        options = json.loads(args.options)
    except ValueError as err:
        raise ValueError(f"--options is not valid JSON ({err}): {args.options!r}") from err
    reward = build_reward({args.reward: 1.0}, args.device, {args.reward: options})
    if not args.no_preload:
        # Load before binding, so a missing model fails here and not on the first client.
        reward.ensure_loaded()
    return make_server(reward, args.host, args.port, args.verbose)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        server = build_server(argv)
    except (ValueError, RewardUnavailable, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    reward = server.reward
    print(f"serving reward {reward.name!r} [{reward.low:g}, {reward.high:g}] on {server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
