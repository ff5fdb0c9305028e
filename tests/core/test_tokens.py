"""Token counting: exact parity with `tiktoken` (loaded offline from the reference rank files),
incremental = one-shot for any split, the model table, prompt estimates, fallbacks."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import meterkit
from meterkit import (
    TokenCounter,
    UnknownModelError,
    count_chat_prompt,
    count_tokens,
    encoding_for_model,
    resolve_model,
)

ENCODINGS = ["cl100k_base", "o200k_base"]

CORPUS = [
    "",
    "Hello, world! This is a perfectly ordinary English sentence, isn't it? We'll see.",
    "def fib(n: int) -> int:\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n"
    "\n\tprint(fib(30))\n",
    json.dumps({"id": 12345, "name": "widget", "tags": ["a", "b"], "price": 19.99, "ok": True}),
    "東京都は日本の首都です。北京是中国的首都。서울은 한국의 수도입니다。",
    "Emoji: 🙂👍🏽👨‍👩‍👧‍👦🏳️‍🌈 and flags 🇩🇪🇯🇵 and keycap 1️⃣",
    " " * 1000 + "x" + "\n" * 500 + "\t" * 300 + "y",
    "1234567890" * 120 + " 3.14159265358979 " + "0" * 77,
    "\r\n\r\n  \r \n\n\n   leading and trailing   \n",
    "HELLO WORLD ǅungla über straße ŒUVRE naïve café résumé",
    "<|endoftext|> special tokens count as text <|fim_prefix|>",
    "a" * 5000,
    "It's they're we've I'm you'll he'd IT'S THEY'RE",
    "مرحبا بالعالم — שלום עולם — नमस्ते दुनिया — Привет, мир",
    "\u0301\u0301e\u0301 combining marks and \u00a0 no-break \u200b zero-width",
]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_corpus_parity_with_tiktoken(encoding: str, tiktoken_encodings: dict[str, Any]) -> None:
    ref = tiktoken_encodings[encoding]
    for text in CORPUS:
        assert count_tokens(text, encoding=encoding) == len(ref.encode_ordinary(text)), text[:40]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_long_mixed_document_parity(encoding: str, tiktoken_encodings: dict[str, Any]) -> None:
    text = "\n".join(CORPUS) * 40
    assert count_tokens(text, encoding=encoding) == len(
        tiktoken_encodings[encoding].encode_ordinary(text)
    )


_alphabet = st.sampled_from(
    list(" \t\n\r")
    + [
        "  ",
        "\r\n",
        "a",
        "Z",
        "HELLO",
        "World",
        "'",
        "'s",
        "'ll",
        "1",
        "23",
        "4567",
        ".",
        "!",
        "/",
        "{",
        "}",
        '"',
        "日本",
        "語",
        "🙂",
        "👨‍👩‍👧",
        "é",
        "\u0301",
        "ß",
        "\u00a0",
        "_",
        "ǅ",
        "über",
        "\u200d",
        "١٢٣",
    ]
)
texts = st.one_of(st.text(), st.lists(_alphabet, max_size=80).map("".join))


@settings(max_examples=400, deadline=None)
@given(text=texts, encoding=st.sampled_from(ENCODINGS))
def test_random_text_parity(text: str, encoding: str, tiktoken_encodings: dict[str, Any]) -> None:
    assert count_tokens(text, encoding=encoding) == len(
        tiktoken_encodings[encoding].encode_ordinary(text)
    )


def _split_codepoints(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    out, prev = [], 0
    for p in points:
        out.append(text[prev:p])
        prev = p
    out.append(text[prev:])
    return out


@settings(max_examples=400, deadline=None)
@given(
    text=texts,
    cuts=st.lists(st.integers(0, 10_000), max_size=30),
    encoding=st.sampled_from(ENCODINGS),
)
def test_incremental_equals_one_shot_for_any_split(
    text: str, cuts: list[int], encoding: str, tiktoken_encodings: dict[str, Any]
) -> None:
    counter = TokenCounter(encoding)
    so_far = ""
    for delta in _split_codepoints(text, cuts):
        counter.push(delta)
        so_far += delta
        assert counter.count == count_tokens(so_far, encoding=encoding)
    assert counter.finish() == len(tiktoken_encodings[encoding].encode_ordinary(text))


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_random_delta_splits_of_long_documents(
    encoding: str, tiktoken_encodings: dict[str, Any]
) -> None:
    """LLM-sized deltas (1-40 chars) over the corpus; also shows why summing deltas is wrong."""
    rng = random.Random(1234)
    ref = tiktoken_encodings[encoding]
    for text in CORPUS:
        for _ in range(5):
            counter = TokenCounter(encoding)
            summed = 0
            i = 0
            while i < len(text):
                n = rng.randint(1, 40)
                counter.push(text[i : i + n])
                summed += count_tokens(text[i : i + n], encoding=encoding)
                i += n
            assert counter.finish() == len(ref.encode_ordinary(text))
            assert summed >= counter.finish()


def test_text_split_mid_codepoint_is_reassembled_by_the_caller() -> None:
    """Deltas are str: bytes split mid-codepoint must be decoded incrementally before pushing."""
    import codecs

    text = "naïve 🙂 東京"
    raw = text.encode()
    dec = codecs.getincrementaldecoder("utf-8")()
    counter = TokenCounter("o200k_base")
    for i in range(len(raw)):
        counter.push(dec.decode(raw[i : i + 1]))
    assert counter.finish() == count_tokens(text)


MODELS = [
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4o-2024-08-06",
    "chatgpt-4o-latest",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.5-preview",
    "gpt-5",
    "gpt-5-mini",
    "o1",
    "o1-mini",
    "o3",
    "o3-mini",
    "o4-mini",
    "o4-mini-2025-04-16",
    "gpt-4",
    "gpt-4-0613",
    "gpt-4-turbo",
    "gpt-4-32k",
    "gpt-3.5-turbo",
    "gpt-3.5-turbo-0125",
    "gpt-35-turbo",
    "text-embedding-3-small",
    "text-embedding-ada-002",
    "davinci-002",
    "ft:gpt-4o-mini:org::abc",
    "ft:gpt-3.5-turbo:org::x",
]


@pytest.mark.parametrize("model", MODELS)
def test_model_table_matches_tiktoken(model: str, tiktoken_encodings: dict[str, Any]) -> None:
    import tiktoken

    assert encoding_for_model(model) == tiktoken.encoding_name_for_model(model)
    assert resolve_model(model) == (encoding_for_model(model), "counted")


def test_unknown_models_need_an_explicit_estimate() -> None:
    with pytest.raises(UnknownModelError, match=r"allow_estimate|resolve_model"):
        count_tokens("hi", model="llama-3.1-70b")
    with pytest.raises(KeyError):
        encoding_for_model("claude-sonnet-4-6")
    assert resolve_model("claude-sonnet-4-6") == ("o200k_base", "estimated")
    assert count_tokens("hello world", model="llama", allow_estimate=True) == 2
    counter = TokenCounter("claude-sonnet-4-6", allow_estimate=True)
    assert (counter.encoding, counter.provenance) == ("o200k_base", "estimated")
    with pytest.raises(UnknownModelError):
        TokenCounter("mystery-model")
    with pytest.raises(ValueError):
        count_tokens("x", encoding="p50k_base")


def _cookbook_prompt_count(messages: list[dict[str, str]], enc: Any) -> int:
    """OpenAI cookbook's num_tokens_from_messages for current models."""
    n = 0
    for m in messages:
        n += 3
        for key, value in m.items():
            n += len(enc.encode(value))
            if key == "name":
                n += 1
    return n + 3


def test_chat_prompt_rule_matches_cookbook(tiktoken_encodings: dict[str, Any]) -> None:
    messages = [
        {"role": "system", "content": "You are a helpful, pattern-following assistant."},
        {
            "role": "system",
            "name": "example_user",
            "content": "New synergies will help drive top-line growth.",
        },
        {"role": "user", "content": "This late pivot means we don't have time to boil the ocean."},
    ]
    for model, enc in [("gpt-4o", "o200k_base"), ("gpt-4", "cl100k_base")]:
        assert count_chat_prompt(messages, model) == _cookbook_prompt_count(
            messages, tiktoken_encodings[enc]
        )


def test_chat_prompt_counts_parts_and_tool_calls() -> None:
    plain = count_chat_prompt([{"role": "user", "content": "hello world"}])
    parts = count_chat_prompt(
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "hello world"},
                    {"type": "image_url", "image_url": {"url": "x"}},
                ],
            }
        ]
    )
    assert parts == plain
    with_call = count_chat_prompt(
        [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c",
                        "type": "function",
                        "function": {"name": "get", "arguments": '{"q": 1}'},
                    }
                ],
            }
        ]
    )
    assert with_call > 7
    with pytest.raises(TypeError):
        count_chat_prompt(["not a message"])  # type: ignore[list-item]


def test_request_prompt_for_each_format() -> None:
    msgs = [{"role": "user", "content": "hello world"}]
    chat = meterkit.count_request_prompt({"model": "gpt-4o", "messages": msgs}, "openai-chat")
    assert chat == count_chat_prompt(msgs, "gpt-4o")
    anth = meterkit.count_request_prompt(
        {"model": "claude-x", "system": "be brief", "messages": msgs}, "anthropic"
    )
    assert anth > chat
    assert (
        meterkit.count_request_prompt(
            {"model": "gpt-4o", "input": "hello world"}, "openai-responses"
        )
        == chat
    )
    assert (
        meterkit.count_request_prompt(
            {"model": "gpt-3.5-turbo-instruct", "prompt": ["a b", "c"]}, "openai-completions"
        )
        == 3
    )


def test_long_input_counts_in_threads_concurrently() -> None:
    """Long inputs release the GIL; several threads still get exact, independent results."""
    from concurrent.futures import ThreadPoolExecutor

    text = " ".join(CORPUS) * 200
    expected = count_tokens(text)
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(count_tokens, [text] * 8)) == [expected] * 8
