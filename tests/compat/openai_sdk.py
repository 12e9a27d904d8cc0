"""Drives Tollgate with the official `openai` Python SDK.

Run by tests/api/compat.rs, which starts Tollgate in front of a fake upstream and passes:
TOLLGATE_BASE_URL, TOLLGATE_KEY (funded), TOLLGATE_POOR_KEY (no money),
TOLLGATE_LIMITED_BASE_URL and TOLLGATE_LIMITED_KEY (an upstream that always answers 429).
Prints one line per check and ends with `N passed, N failed`.
"""

import os
import sys
import traceback

import openai

BASE = os.environ["TOLLGATE_BASE_URL"]
KEY = os.environ["TOLLGATE_KEY"]
MODEL = os.environ.get("TOLLGATE_MODEL", "test-model")
MESSAGES = [{"role": "user", "content": "Say hello."}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


def client(key=KEY, base=BASE):
    # No SDK retries: each check sees Tollgate's first answer.
    return openai.OpenAI(api_key=key, base_url=base, max_retries=0, timeout=30)


def chat():
    r = client().chat.completions.create(model=MODEL, messages=MESSAGES)
    assert r.choices[0].message.content == "Hello w1 w2 w3 w4", r
    assert r.usage.prompt_tokens == 17 and r.usage.completion_tokens == 5, r.usage


def stream_without_usage():
    chunks = list(client().chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello w1 w2 w3 w4", text
    assert all(c.usage is None for c in chunks), "the usage chunk was not asked for"


def stream_with_usage():
    chunks = list(
        client().chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5, chunks[-1]
    assert chunks[-1].choices == []


def tool_calls():
    r = client().chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice="auto")
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and call.function.arguments == '{"city":"Paris"}', call
    assert r.choices[0].finish_reason == "tool_calls"


def tool_calls_streamed():
    chunks = list(client().chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, stream=True))
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls and calls[0].function.name == "get_weather", chunks


def models_list():
    ids = [m.id for m in client().models.list()]
    assert MODEL in ids, ids


def bad_key_is_authentication_error():
    try:
        client(key="sk-" + "A" * 32).chat.completions.create(model=MODEL, messages=MESSAGES)
    except openai.AuthenticationError as e:
        assert e.status_code == 401
        return
    raise AssertionError("no AuthenticationError")


def no_money_is_402():
    try:
        client(key=os.environ["TOLLGATE_POOR_KEY"]).chat.completions.create(model=MODEL, messages=MESSAGES)
    except openai.APIStatusError as e:
        assert e.status_code == 402, e.status_code
        assert "insufficient balance" in e.message, e.message
        return
    raise AssertionError("no APIStatusError")


def rate_limited_is_rate_limit_error():
    c = client(key=os.environ["TOLLGATE_LIMITED_KEY"], base=os.environ["TOLLGATE_LIMITED_BASE_URL"])
    try:
        c.chat.completions.create(model=MODEL, messages=MESSAGES)
    except openai.RateLimitError as e:
        assert e.status_code == 429
        assert e.response.headers.get("retry-after"), "Retry-After is set"
        return
    raise AssertionError("no RateLimitError")


def unknown_model_is_not_found():
    try:
        client().chat.completions.create(model="no-such-model", messages=MESSAGES)
    except openai.NotFoundError as e:
        assert e.status_code == 404
        return
    raise AssertionError("no NotFoundError")


def malformed_request_is_bad_request():
    try:
        client().chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=-5)
    except openai.BadRequestError as e:
        assert e.status_code == 400
        return
    raise AssertionError("no BadRequestError")


CHECKS = [
    chat,
    stream_without_usage,
    stream_with_usage,
    tool_calls,
    tool_calls_streamed,
    models_list,
    bad_key_is_authentication_error,
    no_money_is_402,
    rate_limited_is_rate_limit_error,
    unknown_model_is_not_found,
    malformed_request_is_bad_request,
]

passed = failed = 0
for check in CHECKS:
    try:
        check()
        passed += 1
        print(f"ok   {check.__name__}")
    except Exception:  # noqa: BLE001 - report every failure and go on
        failed += 1
        print(f"FAIL {check.__name__}")
        traceback.print_exc(file=sys.stdout)
print(f"openai {openai.__version__}: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
