#!/usr/bin/env python3
"""The `openai` Python client's tool-calling and structured-output examples against a
kiln server.

Usage: openai_tools.py BASE_URL MODE
  MODE "scripted": the server's model is scripted (tests/common/scripted.rs) to call
  get_current_weather(location="Boston, MA", unit="fahrenheit") and then to answer the
  tool result with EXPECTED_ANSWER; checks the parsed calls (plain and streamed) and the
  second turn built the way the OpenAI guide builds it. Then the structured-output
  example (`chat.completions.parse` with a pydantic model): the scripted reply passes
  through the grammar mask and the client parses it into the model.
  MODE "demo": the demo model (random weights) answers; checks that the client accepts
  a response with tools in the request, and that `response_format` json_schema output
  parses (the mask is all that makes a random model write it).
Driven by tests/openai_client.rs; prints "ok" on success.
"""
import json
import sys

from openai import OpenAI
from pydantic import BaseModel

EXPECTED_ARGS = {"location": "Boston, MA", "unit": "fahrenheit"}
EXPECTED_ANSWER = "It is 72 degrees and sunny in Boston."

tools = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["location"],
            },
        },
    }
]


def scripted(client):
    messages = [{"role": "user", "content": "What's the weather like in Boston today?"}]
    completion = client.chat.completions.create(model="default", messages=messages, tools=tools, tool_choice="auto")
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    calls = choice.message.tool_calls
    assert calls and len(calls) == 1, choice.message
    assert calls[0].type == "function" and calls[0].function.name == "get_current_weather", calls[0]
    assert json.loads(calls[0].function.arguments) == EXPECTED_ARGS, calls[0].function.arguments

    # streamed: accumulate the deltas the way the OpenAI guide does
    final = {}
    for chunk in client.chat.completions.create(model="default", messages=messages, tools=tools, stream=True):
        if not chunk.choices:
            continue
        for tc in chunk.choices[0].delta.tool_calls or []:
            if tc.index not in final:
                final[tc.index] = tc
            else:
                final[tc.index].function.arguments += tc.function.arguments
        assert "<tool_call>" not in (chunk.choices[0].delta.content or ""), chunk
    assert len(final) == 1 and final[0].function.name == "get_current_weather", final
    assert json.loads(final[0].function.arguments) == EXPECTED_ARGS, final[0].function.arguments

    # the second turn: the assistant message as returned, then the tool's result
    messages.append(choice.message)
    messages.append({"role": "tool", "tool_call_id": calls[0].id, "content": json.dumps({"temperature": 72, "sky": "sunny"})})
    second = client.chat.completions.create(model="default", messages=messages, tools=tools)
    assert second.choices[0].message.content == EXPECTED_ANSWER, second
    assert second.choices[0].message.tool_calls is None, second


class CalendarEvent(BaseModel):
    name: str
    date: str
    participants: list[str]


def structured_scripted(client):
    completion = client.chat.completions.parse(
        model="default",
        messages=[{"role": "system", "content": "Extract the event information."},
                  {"role": "user", "content": "Alice and Bob are going to a science fair on Friday."}],
        response_format=CalendarEvent)
    event = completion.choices[0].message.parsed
    assert event == CalendarEvent(name="Science Fair", date="Friday", participants=["Alice", "Bob"]), completion


def demo(client):
    messages = [{"role": "user", "content": "What's the weather like in Boston today?"}]
    completion = client.chat.completions.create(
        model="default", messages=messages, tools=tools, max_tokens=8,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    msg = completion.choices[0].message
    assert msg.role == "assistant" and (msg.content or msg.tool_calls), completion
    assert completion.usage.completion_tokens <= 8, completion.usage

    # structured output: bounded strings and lists, so a random model must finish
    schema = {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 12},
        "temperature": {"type": "integer", "minimum": -50, "maximum": 60},
        "conditions": {"type": "array", "items": {"enum": ["sun", "rain", "snow"]}, "maxItems": 3}},
        "required": ["city", "temperature", "conditions"], "additionalProperties": False}
    completion = client.chat.completions.create(
        model="default", messages=messages, max_tokens=200,
        response_format={"type": "json_schema", "json_schema": {"name": "weather", "schema": schema}},
        extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    data = json.loads(completion.choices[0].message.content)
    assert set(data) == {"city", "temperature", "conditions"}, data
    assert len(data["city"]) <= 12 and -50 <= data["temperature"] <= 60, data


def main():
    base, mode = sys.argv[1], sys.argv[2]
    client = OpenAI(base_url=f"{base}/v1", api_key="EMPTY", max_retries=0, timeout=60)
    if mode == "scripted":
        scripted(client)
        structured_scripted(client)
    else:
        demo(client)
    print("ok")


if __name__ == "__main__":
    main()
