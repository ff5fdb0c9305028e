"""`meterkit meter`: meter one SSE stream from a file, stdin or the built-in sample."""

from __future__ import annotations

import argparse
import sys
from typing import BinaryIO

import orjson

from meterkit import StreamMeter, synth

READ_SIZE = 64 * 1024


def _sample(fmt: str) -> bytes:
    deltas = synth.split_deltas(synth.SAMPLE_TEXT)
    if fmt == "openai-chat":
        return synth.stream_bytes(synth.chat_events(deltas))
    if fmt == "anthropic":
        return synth.stream_bytes(synth.anthropic_events(deltas))
    if fmt == "openai-responses":
        return synth.stream_bytes(synth.responses_events(deltas))
    if fmt == "openai-completions":
        return synth.stream_bytes(synth.completions_events(deltas))
    raise SystemExit(f"meterkit meter: unknown sample format {fmt!r}")


def meter_stream(meter: StreamMeter, source: BinaryIO, sink: BinaryIO | None) -> None:
    """Feed `source` to `meter` one read at a time, writing what it forwards to `sink`."""
    while chunk := source.read(READ_SIZE):
        out = meter.feed(chunk)
        if sink is not None and out.forward:
            sink.write(out.forward)
    tail = meter.close().forward
    if sink is not None and tail:
        sink.write(tail)


def summary(meter: StreamMeter) -> dict[str, object]:
    usage = meter.usage
    return {
        "format": meter.format,
        "model": meter.stream_model,
        "encoding": meter.encoding,
        "provenance": meter.provenance,
        "completion_tokens": meter.completion_tokens,
        "tokens_by_channel": dict(meter.tokens_by_channel),
        "upstream_usage": usage.as_dict() if usage else None,
        "finish_reasons": {str(c): r for c, r in meter.finish_reasons},
        "state": meter.state,
        "events": meter.events,
        "bytes_in": meter.bytes_in,
        "bytes_out": meter.bytes_out,
        "anomalies": [
            {"kind": a.kind, "offset": a.offset, "message": a.message} for a in meter.anomalies
        ],
    }


def run(args: argparse.Namespace) -> int:
    import io

    fmt = args.format
    if args.input is None:
        source: BinaryIO = io.BytesIO(_sample(args.sample))
        if fmt == "auto":
            fmt = args.sample
    elif args.input == "-":
        source = sys.stdin.buffer
    else:
        try:
            source = open(args.input, "rb")  # noqa: SIM115 - closed below
        except OSError as e:
            print(f"meterkit meter: cannot read {args.input}: {e.strerror}", file=sys.stderr)
            return 1
    try:
        meter = StreamMeter(fmt, args.model, limit=args.limit, ending=args.ending)
    except ValueError as e:
        print(f"meterkit meter: {e}", file=sys.stderr)
        return 2
    sink = open(args.output, "wb") if args.output else None  # noqa: SIM115
    try:
        meter_stream(meter, source, sink)
    finally:
        if sink is not None:
            sink.close()
        if source is not sys.stdin.buffer:
            source.close()
    sys.stdout.write(orjson.dumps(summary(meter), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0
