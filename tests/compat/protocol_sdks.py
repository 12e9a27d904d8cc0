"""Drives Tollgate's protocol edges with the official `anthropic` and `openai` Python SDKs.

Run by tests/api/sdks.rs, which starts Tollgate in front of a fake upstream (an Anthropic channel
for Messages, an OpenAI one for Responses and embeddings) and passes:
TOLLGATE_URL (the gateway's root, no /v1), TOLLGATE_KEY (funded), TOLLGATE_POOR_KEY (too little
money for any request). Prints one line per check and ends with `N passed, N failed`.
"""

import os
import sys
import traceback

import anthropic
import openai

URL = os.environ["TOLLGATE_URL"]
KEY = os.environ["TOLLGATE_KEY"]
POOR_KEY = os.environ["TOLLGATE_POOR_KEY"]
MODEL = os.environ.get("TOLLGATE_MODEL", "test-model")
TEXT = "Hello from the fake."
MESSAGES = [{"role": "user", "content": "Say hello."}]
TOOLS = [
    {
        "name": "get_weather",
        "description": "The weather in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]


# No SDK retries: each check sees Tollgate's first answer.
def claude(key=KEY, **kw):
    if "auth_token" in kw:
        return anthropic.Anthropic(base_url=URL, max_retries=0, timeout=30, **kw)
    return anthropic.Anthropic(api_key=key, base_url=URL, max_retries=0, timeout=30, **kw)


def oai(key=KEY):
    return openai.OpenAI(api_key=key, base_url=URL + "/v1", max_retries=0, timeout=30)


# --- Anthropic Messages ---------------------------------------------------------------------


def messages_create():
    m = claude().messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
    assert isinstance(m, anthropic.types.Message), type(m)
    assert m.content[0].type == "text" and m.content[0].text == TEXT, m.content
    assert m.stop_reason == "end_turn", m.stop_reason
    u = m.usage
    assert (u.input_tokens, u.cache_read_input_tokens, u.cache_creation_input_tokens, u.output_tokens) == (
        12,
        100,
        40,
        9,
    ), u


def messages_create_with_bearer_token():
    # `auth_token` sends `Authorization: Bearer` instead of `x-api-key`.
    m = claude(auth_token=KEY).messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
    assert m.content[0].text == TEXT, m.content


def messages_stream():
    with claude().messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES) as stream:
        deltas = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(deltas) == TEXT and len(deltas) == 3, deltas
    assert final.content[0].text == TEXT, final.content
    assert final.stop_reason == "end_turn", final.stop_reason
    assert (final.usage.input_tokens, final.usage.output_tokens) == (13, 6), final.usage


def tool_use():
    m = claude().messages.create(model=MODEL, max_tokens=64, messages=MESSAGES, tools=TOOLS)
    assert m.stop_reason == "tool_use", m.stop_reason
    block = m.content[0]
    assert isinstance(block, anthropic.types.ToolUseBlock), type(block)
    assert block.name == "get_weather" and block.input == {"city": "Paris"}, block
    assert block.id.startswith("toolu_"), block.id


def tool_use_streamed():
    with claude().messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES, tools=TOOLS) as stream:
        partial = [e.partial_json for e in stream if e.type == "input_json"]
        final = stream.get_final_message()
    assert "".join(partial) == '{"city": "Paris"}', partial
    block = final.content[0]
    assert block.type == "tool_use" and block.input == {"city": "Paris"}, final.content
    assert final.stop_reason == "tool_use" and final.usage.output_tokens == 16, final


def count_tokens():
    r = claude().messages.count_tokens(model=MODEL, messages=MESSAGES, tools=TOOLS)
    assert r.input_tokens == 37, r


def messages_bad_key_is_authentication_error():
    try:
        claude(key="sk-" + "A" * 32).messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
    except anthropic.AuthenticationError as e:
        assert e.status_code == 401 and e.type == "authentication_error", (e.status_code, e.type)
        return
    raise AssertionError("no AuthenticationError")


def messages_no_money_is_payment_required():
    try:
        claude(key=POOR_KEY).messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
    except anthropic.APIStatusError as e:
        # anthropic 2.17 maps 402 to PaymentRequiredError, a subclass of APIStatusError.
        assert type(e).__name__ == "PaymentRequiredError", type(e)
        assert e.status_code == 402 and e.type == "billing_error", (e.status_code, e.type)
        assert e.api_message, e.body
        return
    raise AssertionError("no APIStatusError")


def messages_stream_no_money_raises_before_any_event():
    try:
        with claude(key=POOR_KEY).messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES) as stream:
            list(stream)
    except anthropic.APIStatusError as e:
        assert e.status_code == 402 and e.type == "billing_error", (e.status_code, e.type)
        return
    raise AssertionError("no APIStatusError")


# --- OpenAI Responses and embeddings --------------------------------------------------------

created_id = None


def responses_create():
    global created_id
    r = oai().responses.create(model=MODEL, input="Say hello.")
    assert r.object == "response" and r.status == "completed", r
    assert r.output_text == TEXT, r.output_text
    assert r.usage.input_tokens == 30 and r.usage.output_tokens == 10, r.usage
    assert r.usage.input_tokens_details.cached_tokens == 10, r.usage
    assert r.usage.output_tokens_details.reasoning_tokens == 4, r.usage
    created_id = r.id


def responses_stream():
    kinds = []
    deltas = []
    with oai().responses.stream(model=MODEL, input="Say hello.") as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            if event.type == "response.completed":
                break
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed", kinds
    assert "".join(deltas) == TEXT, deltas
    assert final.output_text == TEXT and final.usage.output_tokens == 11, final


def responses_create_stream_true():
    events = list(oai().responses.create(model=MODEL, input="Say hello.", stream=True))
    completed = [e for e in events if e.type == "response.completed"]
    assert len(completed) == 1 and events[-1].type == "response.completed", [e.type for e in events]
    assert completed[0].response.usage.input_tokens == 31, completed[0].response.usage
    assert [e.sequence_number for e in events] == list(range(len(events)))


def responses_retrieve():
    assert created_id, "responses_create ran first"
    r = oai().responses.retrieve(created_id)
    assert r.id == created_id and r.output_text == TEXT, r


def responses_retrieve_unknown_is_not_found():
    try:
        oai().responses.retrieve("resp_nobody_made_this")
    except openai.NotFoundError as e:
        assert e.status_code == 404
        return
    raise AssertionError("no NotFoundError")


def responses_no_money_is_402():
    try:
        oai(POOR_KEY).responses.create(model=MODEL, input="Say hello.")
    except openai.APIStatusError as e:
        assert e.status_code == 402, e.status_code
        assert "insufficient balance" in e.message, e.message
        return
    raise AssertionError("no APIStatusError")


def responses_bad_key_is_authentication_error():
    try:
        oai("sk-" + "B" * 32).responses.create(model=MODEL, input="Say hello.")
    except openai.AuthenticationError as e:
        assert e.status_code == 401
        return
    raise AssertionError("no AuthenticationError")


def embeddings_string():
    # No encoding_format: the SDK asks for base64 and decodes it.
    r = oai().embeddings.create(model=MODEL, input="first passage")
    assert len(r.data) == 1 and r.data[0].embedding == [0.5, -0.25, 0.125], r.data
    assert r.usage.prompt_tokens == 4, r.usage


def embeddings_list():
    r = oai().embeddings.create(model=MODEL, input=["one", "two", "three"], encoding_format="float")
    assert [d.index for d in r.data] == [0, 1, 2], r.data
    assert [d.embedding for d in r.data] == [[i + 0.5, -0.25, 0.125] for i in range(3)], r.data
    assert r.usage.prompt_tokens == 12, r.usage


CHECKS = [
    messages_create,
    messages_create_with_bearer_token,
    messages_stream,
    tool_use,
    tool_use_streamed,
    count_tokens,
    messages_bad_key_is_authentication_error,
    messages_no_money_is_payment_required,
    messages_stream_no_money_raises_before_any_event,
    responses_create,
    responses_stream,
    responses_create_stream_true,
    responses_retrieve,
    responses_retrieve_unknown_is_not_found,
    responses_no_money_is_402,
    responses_bad_key_is_authentication_error,
    embeddings_string,
    embeddings_list,
]

# The version header the SDK sends, for the test to find upstream.
print(f"anthropic-version: {claude().default_headers['anthropic-version']}")
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
print(f"anthropic {anthropic.__version__}, openai {openai.__version__}: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
