"""The ``sayit`` command: ``sayit serve [--host] [--port]`` runs a node in the role of WORKER_MODE."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from aiohttp import web

from config import LANGUAGES, ConfigError, load_settings
from http_edge import formats
from sayit_actors.engines import EngineUnavailable
from sayit_actors.store.redis_server import RedisPolicyError
from sayit_cli import client

ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tfs rid=%{X-Request-Id}o'


def _serve(args: argparse.Namespace) -> int:
    from http_edge import create_app
    from http_edge.server import quiet_protocol_errors, server_options

    quiet_protocol_errors()

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = load_settings(**overrides)
    app = create_app(settings)
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        access_log_format=ACCESS_LOG_FORMAT,
        print=lambda msg: logging.getLogger("sayit").info(msg.strip()),
        **server_options(),
    )
    return 0


def _worker(args: argparse.Namespace) -> int:
    os.environ["WORKER_MODE"] = "queue_only"
    return _serve(args)


def _convert_mlx(args: argparse.Namespace) -> int:
    from sayit_actors.engines.mlx_convert import ConversionError, convert, ensure_converted

    settings = load_settings()
    model = args.model or settings.engine.model
    try:
        folder = convert(model, args.out) if args.out else ensure_converted(model, settings.data_dir)
    except ConversionError as exc:
        print(f"sayit: cannot convert {model!r}: {exc}", file=sys.stderr)
        return 2
    print(f"MLX model ready in {folder} (SAYIT_ENGINE=mlx uses it for SAYIT_MODEL={model})")
    return 0


def _admin(args: argparse.Namespace) -> int:
    if not args.token:
        print("sayit admin: give --token or set SAYIT_ADMIN_TOKEN", file=sys.stderr)
        return 2
    base = args.url.rstrip("/")
    if args.admin_command == "restart":
        request = urllib.request.Request(f"{base}/admin/actors/{args.name}/restart", data=b"", method="POST")
    else:
        request = urllib.request.Request(f"{base}/admin/actors")
    request.add_header("Authorization", f"Bearer {args.token}")
    try:
        with urllib.request.urlopen(request, timeout=180) as response:
            data = json.load(response)["data"]
    except urllib.error.HTTPError as exc:
        try:
            message = json.load(exc)["error"]["message"]
        except (ValueError, KeyError):
            message = exc.reason
        print(f"sayit admin: {exc.code} {message}", file=sys.stderr)
        return 1
    except urllib.error.URLError as exc:
        print(f"sayit admin: cannot reach {base}: {exc.reason}", file=sys.stderr)
        return 1
    rows = [data] if args.admin_command == "restart" else data["actors"]
    for row in rows:
        state = "alive" if row["alive"] else ("given up" if row["givenUp"] else "stopped")
        since = f" since {row['since']}" if row["since"] else ""
        print(f"{row['name']:<16} {row['kind']:<14} {state:<8} restarts={row['restarts']:<3} {row['doing']}{since}")
    return 0


def _transcribe(args: argparse.Namespace) -> int:
    """Delegates to ``sayit_cli.client``: the command needs nothing of the server's stack."""
    options = client.Options(
        url=args.url,
        language=args.language,
        fmt=args.format,
        word_timestamps=args.word_timestamps,
        prompt=args.prompt,
        api_key=args.api_key,
    )
    try:
        return client.run(args.files, options, args.out)
    except KeyboardInterrupt:
        print("\nsayit transcribe: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sayit", description="SayIt speech-to-text service")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run a node (role from WORKER_MODE, default all)")
    serve.add_argument("--host", help="address to listen on (default SAYIT_HOST or 0.0.0.0)")
    serve.add_argument("--port", type=int, help="port to listen on (default SAYIT_PORT or 3000)")
    serve.set_defaults(run=_serve)
    worker = commands.add_parser("worker", help="run a queue node (WORKER_MODE=queue_only)")
    worker.add_argument("--host", help="address of its /health and /metrics (default SAYIT_HOST or 0.0.0.0)")
    worker.add_argument("--port", type=int, help="port of its /health and /metrics (default SAYIT_PORT or 3000)")
    worker.set_defaults(run=_worker)
    convert = commands.add_parser("convert-mlx", help="convert a Whisper model to mlx-whisper's format")
    convert.add_argument("--model", default=None, help="'base' (bundled) or a CTranslate2 folder (default SAYIT_MODEL)")
    convert.add_argument("--out", type=Path, help="output folder (default <SAYIT_DATA_DIR>/mlx/<model>)")
    convert.set_defaults(run=_convert_mlx)
    admin = commands.add_parser("admin", help="list a node's actors or restart one")
    admin.add_argument("--url", default="http://localhost:3000", help="the node (default http://localhost:3000)")
    admin.add_argument("--token", default=os.environ.get("SAYIT_ADMIN_TOKEN"), help="default SAYIT_ADMIN_TOKEN")
    admin_commands = admin.add_subparsers(dest="admin_command", required=True)
    admin_commands.add_parser("actors", help="list the actors: kind, alive, restarts, what each is doing")
    restart = admin_commands.add_parser("restart", help="restart one actor gracefully")
    restart.add_argument("name")
    admin.set_defaults(run=_admin)
    transcribe = commands.add_parser("transcribe", help="transcribe local recordings on a SayIt server")
    transcribe.add_argument("files", nargs="+", type=Path, metavar="FILE", help="recordings to transcribe")
    transcribe.add_argument(
        "--url", default=client.default_url(), help=f"the server (default SAYIT_URL or {client.DEFAULT_URL})"
    )
    transcribe.add_argument("--language", choices=LANGUAGES, default="auto", help="default auto")
    transcribe.add_argument("--format", choices=formats.FORMATS, default="json", help="default json")
    transcribe.add_argument(
        "--out", type=Path, help="output file (one FILE) or folder of <stem>.<format> (several); default stdout"
    )
    transcribe.add_argument("--word-timestamps", action="store_true", help="per-word times (json)")
    transcribe.add_argument("--prompt", help="text to steer the vocabulary, e.g. product names")
    transcribe.add_argument(
        "--api-key", default=os.environ.get("SAYIT_API_KEY"), help="bearer key when the server sets SAYIT_API_KEYS"
    )
    transcribe.set_defaults(run=_transcribe)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    logging.basicConfig(
        level=os.environ.get("SAYIT_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Pykka logs every error returned to a caller with its traceback; the edge logs what matters.
    logging.getLogger("pykka").setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        return int(args.run(args))
    except (ConfigError, EngineUnavailable, RedisPolicyError, FileNotFoundError) as exc:
        print(f"sayit: cannot start: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
