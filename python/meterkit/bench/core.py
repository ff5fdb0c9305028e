"""`meterkit bench core`: the Rust core against pure-Python baselines and `tiktoken`.

What is measured (all single-threaded, same process, same data, best of several runs):
1. The metering pipeline (SSE framing + extraction + exact count) on realistic OpenAI chat,
   Anthropic and OpenAI Responses streams, one event per read and many events per read:
   meterkit's StreamMeter versus `PythonPipeline` (bytes scanning + orjson + one tiktoken
   call at the end; `ResponsesPipeline` adds the Responses delta events). JSON: `pipeline`
   (OpenAI chat and Anthropic, as in earlier runs) and `pipeline_responses`.
2. Framing + extraction alone, in Rust (one call for the whole buffer) versus the same
   pure-Python framing and orjson extraction.
3. Token counting: meterkit versus tiktoken's `encode_ordinary` on the same text, and the
   incremental counter (LLM-sized deltas) versus meterkit's own one-shot count.
4. Linearity: one 8 MB event fed in one read versus 1,024 reads.
"""

from __future__ import annotations

import random
import sys
from functools import partial
from typing import Any

import orjson

from meterkit import StreamMeter, _core, synth
from meterkit.bench import plots as draw
from meterkit.bench.baseline import PythonPipeline
from meterkit.bench.plots import Output
from meterkit.bench.reference import load_tiktoken
from meterkit.bench.timing import best_of, environment, progress, table

CORPUS_PARTS = [
    "The quick brown fox jumps over the lazy dog. It's 2026 and we'll meter every token.\n",
    'def handler(request):\n    return {"status": 200, "body": [1, 2, 3]}\n\n',
    '{"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"content": "hi"}}]}\n',
    "東京は日本の首都です。北京是中国的首都。서울은 한국의 수도입니다.\n",
    "Emoji 🙂👍🏽👨‍👩‍👧 and numbers 3.14159 1234567890   spaces\t\ttabs\n",
]


def corpus(size: int) -> str:
    rng = random.Random(7)
    out: list[str] = []
    n = 0
    while n < size:
        part = rng.choice(CORPUS_PARTS)
        out.append(part)
        n += len(part)
    return "".join(out)


def deltas_of(text: str, seed: int = 1) -> list[str]:
    """LLM-sized deltas: 1 to 12 characters, averaging ~4 chars (about one token)."""
    rng = random.Random(seed)
    out = []
    i = 0
    while i < len(text):
        n = rng.choice((1, 2, 3, 3, 4, 4, 5, 6, 8, 12))
        out.append(text[i : i + n])
        i += n
    return out


FORMATS = ("openai-chat", "anthropic", "openai-responses")


def stream(fmt: str, deltas: list[str]) -> bytes:
    if fmt == "openai-chat":
        return synth.stream_bytes(synth.chat_events(deltas))
    if fmt == "openai-responses":
        return synth.stream_bytes(synth.responses_events(deltas))
    return synth.stream_bytes(synth.anthropic_events(deltas))


class ResponsesPipeline(PythonPipeline):
    """The same pure-Python pipeline, also reading Responses text deltas (the billed
    `response.output_text.delta` events; the `.done` echo of the whole text is not billed)."""

    def _event(self, block: bytes) -> None:
        data = []
        for line in block.split(b"\n"):
            if line.startswith(b"data:"):
                v = line[5:]
                data.append(v[1:] if v.startswith(b" ") else v)
        if not data:
            return
        self.events += 1
        obj = orjson.loads(b"\n".join(data))
        if obj.get("type") == "response.output_text.delta":
            text = obj.get("delta")
            if text:
                self.parts.append(text)


def baseline(fmt: str, enc: Any) -> PythonPipeline:
    """The pure-Python pipeline for `fmt` (the Responses one only where needed, so the other
    formats pay no extra method call)."""
    return ResponsesPipeline(fmt, enc) if fmt == "openai-responses" else PythonPipeline(fmt, enc)


def py_frame_and_extract(data: bytes, fmt: str) -> int:
    """Framing + extraction only (no counting), the baseline of `_core.frame_and_extract`."""
    p = baseline(fmt, None)
    p.feed(data)
    return len(p.parts)


def reads(data: bytes, events_per_read: int) -> list[bytes]:
    """Split at event boundaries, `events_per_read` events per read."""
    blocks = data.split(b"\n\n")[:-1]
    blocks = [b + b"\n\n" for b in blocks]
    return [
        b"".join(blocks[i : i + events_per_read]) for i in range(0, len(blocks), events_per_read)
    ]


def run_meter(chunks: list[bytes], fmt: str) -> int:
    m = StreamMeter(fmt, "gpt-4o")
    for c in chunks:
        m.feed(c)
    m.close()
    return m.completion_tokens


def run_python(chunks: list[bytes], fmt: str, enc: Any) -> int:
    p = baseline(fmt, enc)
    for c in chunks:
        p.feed(c)
    return p.finish()


def main(quick: bool = False, json_out: str | None = None, plots: Output | None = None) -> int:
    env = environment()
    encodings = load_tiktoken()
    if encodings is None:
        print(
            "meterkit bench core: tiktoken rank files not found; set METERKIT_TIKTOKEN_REFERENCE "
            "to a folder with cl100k_base.tiktoken and o200k_base.tiktoken",
            file=sys.stderr,
        )
        return 1
    o200k = encodings["o200k_base"]
    repeat = 2 if quick else 7
    n_text = 20_000 if quick else 400_000
    results: dict[str, Any] = {"environment": env}
    print(
        f"meterkit bench core: {env['build']} build, Python {env['python']}, "
        f"{env['machine']}, {env['cpus']} CPUs"
    )
    if env["build"] != "release" or quick:
        print("NOTE: not a measurement (debug build or --quick); figures are a smoke test only.")

    # 1. Pipeline -------------------------------------------------------------------------
    text = corpus(n_text)
    deltas = deltas_of(text)
    rows = []
    pipeline: list[dict[str, Any]] = []
    for fmt in FORMATS:
        data = stream(fmt, deltas)
        for per_read in (1, 64):
            progress(
                f"pipeline {fmt}, {per_read} event(s)/read", len(pipeline) + 1, 2 * len(FORMATS)
            )
            chunks = reads(data, per_read)
            n_events = sum(c.count(b"\n\n") for c in chunks)
            ours = run_meter(chunks, fmt)
            theirs = run_python(chunks, fmt, o200k)
            if ours != theirs:
                print(
                    f"count mismatch {fmt}: meterkit {ours} vs baseline {theirs}", file=sys.stderr
                )
                return 1
            t_ours = best_of(partial(run_meter, chunks, fmt), repeat)
            t_py = best_of(partial(run_python, chunks, fmt, o200k), repeat)
            r = {
                "format": fmt,
                "events_per_read": per_read,
                "events": n_events,
                "bytes": len(data),
                "meterkit_us_per_event": t_ours / n_events * 1e6,
                "python_us_per_event": t_py / n_events * 1e6,
                "meterkit_mb_s": len(data) / t_ours / 1e6,
                "python_mb_s": len(data) / t_py / 1e6,
                "speedup": t_py / t_ours,
            }
            pipeline.append(r)
            rows.append(
                [
                    fmt,
                    str(per_read),
                    f"{r['meterkit_us_per_event']:.2f}",
                    f"{r['meterkit_mb_s']:.0f}",
                    f"{r['python_us_per_event']:.2f}",
                    f"{r['python_mb_s']:.0f}",
                    f"{r['speedup']:.1f}x",
                ]
            )
    # "pipeline" keeps the two formats every earlier run recorded (its shape is what
    # tests/test_bench.py checks and what runs are compared by); Responses rows sit beside it.
    results["pipeline"] = [r for r in pipeline if r["format"] != "openai-responses"]
    results["pipeline_responses"] = [r for r in pipeline if r["format"] == "openai-responses"]
    print(f"\n1. Framing + extraction + exact count ({len(deltas)} deltas per stream)")
    print(
        table(
            [
                "format",
                "events/read",
                "meterkit us/ev",
                "MB/s",
                "pure-Python us/ev",
                "MB/s",
                "speedup",
            ],
            rows,
        )
    )

    # 2. Framing + extraction alone ---------------------------------------------------------
    rows = []
    framing: list[dict[str, Any]] = []
    for fmt in FORMATS:
        progress(f"framing + extraction {fmt}", len(framing) + 1, len(FORMATS))
        data = stream(fmt, deltas)
        n_events = data.count(b"\n\n")
        t_ours = best_of(partial(_core.frame_and_extract, data, fmt), repeat)
        t_py = best_of(partial(py_frame_and_extract, data, fmt), repeat)
        r = {
            "format": fmt,
            "meterkit_us_per_event": t_ours / n_events * 1e6,
            "python_us_per_event": t_py / n_events * 1e6,
            "speedup": t_py / t_ours,
        }
        framing.append(r)
        rows.append(
            [
                fmt,
                f"{r['meterkit_us_per_event']:.3f}",
                f"{r['python_us_per_event']:.3f}",
                f"{r['speedup']:.1f}x",
            ]
        )
    results["framing_extraction"] = framing
    print("\n2. Framing + extraction alone (whole buffer, one call)")
    print(table(["format", "meterkit us/ev", "pure-Python us/ev", "speedup"], rows))

    # 3. Counting --------------------------------------------------------------------------
    big = corpus(200_000 if quick else 4_000_000)
    rows = []
    counting: list[dict[str, Any]] = []
    for name in ("cl100k_base", "o200k_base"):
        progress(f"counting {name}", len(counting) + 1, 2)
        enc = encodings[name]
        assert _core.count_tokens(big, name) == len(enc.encode_ordinary(big))
        t_ours = best_of(partial(_core.count_tokens, big, name), repeat)
        t_tk = best_of(partial(enc.encode_ordinary, big), repeat)
        big_deltas = deltas_of(big, 3)
        t_inc = best_of(partial(_core.count_deltas, big_deltas, name), repeat)
        r = {
            "encoding": name,
            "meterkit_mb_s": len(big.encode()) / t_ours / 1e6,
            "tiktoken_mb_s": len(big.encode()) / t_tk / 1e6,
            "speedup_vs_tiktoken": t_tk / t_ours,
            "incremental_over_one_shot": t_inc / t_ours,
        }
        counting.append(r)
        rows.append(
            [
                name,
                f"{r['meterkit_mb_s']:.1f}",
                f"{r['tiktoken_mb_s']:.1f}",
                f"{r['speedup_vs_tiktoken']:.2f}x",
                f"{r['incremental_over_one_shot']:.2f}x",
            ]
        )
    results["counting"] = counting
    print(f"\n3. Token counting, {len(big.encode()) / 1e6:.1f} MB mixed text, single thread")
    print(
        table(
            ["encoding", "meterkit MB/s", "tiktoken MB/s", "speedup", "incremental/one-shot"], rows
        )
    )

    # 4. Linearity --------------------------------------------------------------------------
    size = 1_000_000 if quick else 8_000_000
    body = ("lorem ipsum dolor sit amet " * (size // 27 + 1))[:size]
    event = (
        b"data: "
        + orjson.dumps(
            {
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"content": body}}],
            }
        )
        + b"\n\n"
    )
    pieces = [
        event[i : i + len(event) // 1024 + 1] for i in range(0, len(event), len(event) // 1024 + 1)
    ]
    progress("linearity")
    t_one = best_of(lambda: run_meter([event], "openai-chat"), repeat)
    t_many = best_of(lambda: run_meter(pieces, "openai-chat"), repeat)
    results["linearity"] = {
        "event_bytes": len(event),
        "reads": len(pieces),
        "one_read_s": t_one,
        "many_reads_s": t_many,
        "ratio": t_many / t_one,
    }
    print(f"\n4. Linearity: one {len(event) / 1e6:.1f} MB event, 1 read vs {len(pieces)} reads")
    print(
        table(
            ["1 read ms", f"{len(pieces)} reads ms", "ratio"],
            [[f"{t_one * 1e3:.1f}", f"{t_many * 1e3:.1f}", f"{t_many / t_one:.2f}"]],
        )
    )

    if json_out:
        with open(json_out, "wb") as f:
            f.write(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    if plots is not None:
        progress("plots")
        figures(plots, results)
    return 0


def figures(out: Output, results: dict[str, Any]) -> None:
    """The core figures as PNGs: time per event beside the pure-Python baseline, and counting
    throughput beside tiktoken."""
    label = {"openai-chat": "OpenAI", "anthropic": "Anthropic", "openai-responses": "Responses"}
    draw.grouped_bars(
        out.path("pipeline"),
        "Framing + extraction + exact count, per SSE event",
        {
            f"{label[r['format']]}\n{r['events_per_read']} event(s)/read": {
                "meterkit": r["meterkit_us_per_event"],
                "pure Python": r["python_us_per_event"],
            }
            for r in results["pipeline"] + results.get("pipeline_responses", [])
        },
        "µs per event",
        baseline="pure Python",
        note=out.note,
    )
    draw.bars(
        out.path("speedups"),
        "meterkit speedup over its baselines (same data, same run)",
        {
            **{
                f"pipeline {label[r['format']]}\n{r['events_per_read']} ev/read": r["speedup"]
                for r in results["pipeline"] + results.get("pipeline_responses", [])
            },
            **{
                f"framing {label[r['format']]}": r["speedup"] for r in results["framing_extraction"]
            },
            **{
                f"count {r['encoding']}\nvs tiktoken": r["speedup_vs_tiktoken"]
                for r in results["counting"]
            },
        },
        "speedup (× the baseline)",
        higher_is_better=True,
        ratio_line=True,
        note=out.note,
    )
    draw.grouped_bars(
        out.path("counting"),
        "Token counting throughput, single thread",
        {
            r["encoding"]: {"meterkit": r["meterkit_mb_s"], "tiktoken": r["tiktoken_mb_s"]}
            for r in results["counting"]
        },
        "MB/s",
        baseline="tiktoken",
        higher_is_better=True,
        note=out.note,
    )
