#!/usr/bin/env python3
"""Record Hugging Face's rendering of the Qwen3.5 chat template, for tests/chat_template.rs.

Renders every case below with transformers' own code path
(`PreTrainedTokenizerFast.apply_chat_template(..., tokenize=False)`, which calls
`transformers.utils.chat_template_utils.render_jinja_template`) using
assets/qwen3_5/chat_template.jinja and assets/qwen3_5/tokenizer.json, and writes
tests/data/tokenizer/chat_cases.json: per case the inputs, then either the rendered text and
its token ids, or the error message the template raised; plus `method_cases`, one-line
templates that exercise the Python methods and value printing templates rely on.

Usage (from the repo root; needs transformers 5.x, jinja2 >= 3.1.6, tokenizers):
    /work/pyenv/bin/python scripts/make_chat_fixtures.py
The output is deterministic; re-running must leave `git diff tests/data/tokenizer` empty.
"""
import json
import os

import jinja2
import tokenizers
import transformers
from transformers import PreTrainedTokenizerFast
from transformers.utils.chat_template_utils import render_jinja_template

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSETS = os.path.join(REPO, "assets", "qwen3_5")
OUT = os.path.join(REPO, "tests", "data", "tokenizer", "chat_cases.json")

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Return the current weather for a city. Città: \"quoted\" & <tagged>\n2nd line",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "Nome della città, e.g. 東京"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
                "days": {"type": "integer", "minimum": 1, "maximum": 16},
                "threshold": {"type": "number", "default": 0.5, "exclusiveMaximum": 1e20, "epsilon": 1e-05},
                "detailed": {"type": "boolean", "default": False},
            },
            "required": ["city"],
        },
    },
}
SEARCH = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the web.",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}, "k": {"type": "integer"}}, "required": ["q"]},
    },
}

# Tool-call arguments cover every value type the template prints: str, int, float, bool,
# null (Python str: True / None), list and dict (tojson), non-ASCII text.
ARGS = {"city": "Roma", "days": 3, "threshold": 2.5, "detailed": True, "extra": None,
        "tags": ["a", "ß", 1], "opts": {"lang": "it", "n": 1.0}}

CASES = [
    {"name": "system_and_user", "add_generation_prompt": True,
     "messages": [{"role": "system", "content": "You are a helpful assistant."},
                  {"role": "user", "content": "Hello! ¿Qué tal? 你好"}]},
    {"name": "system_and_user_no_generation_prompt", "add_generation_prompt": False,
     "messages": [{"role": "system", "content": "  Sei conciso.  \n"},
                  {"role": "user", "content": "Ciao"}]},
    {"name": "user_only_thinking_explicit_true", "add_generation_prompt": True,
     "kwargs": {"enable_thinking": True},
     "messages": [{"role": "user", "content": "What is 2+2?"}]},
    {"name": "enable_thinking_false", "add_generation_prompt": True,
     "kwargs": {"enable_thinking": False},
     "messages": [{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "Name a color."}]},
    {"name": "multi_turn_reasoning_content", "add_generation_prompt": True,
     "messages": [{"role": "user", "content": "First question?"},
                  {"role": "assistant", "content": "First answer.", "reasoning_content": "Old reasoning, dropped."},
                  {"role": "user", "content": "Second question?"},
                  {"role": "assistant", "content": "\nSecond answer.\n", "reasoning_content": "\n  New reasoning, kept.  \n"},
                  {"role": "user", "content": "Third?"}]},
    {"name": "multi_turn_reasoning_after_last_query", "add_generation_prompt": False,
     "messages": [{"role": "user", "content": "Q1"},
                  {"role": "assistant", "content": "A1", "reasoning_content": "R1"},
                  {"role": "user", "content": "Q2"},
                  {"role": "assistant", "content": "A2", "reasoning_content": "R2"}]},
    {"name": "inline_think_in_content", "add_generation_prompt": False,
     "messages": [{"role": "user", "content": "Q1"},
                  {"role": "assistant", "content": "<think>\nhidden 1\n</think>\n\nvisible 1"},
                  {"role": "user", "content": "Q2"},
                  {"role": "assistant", "content": "<think>\nthought 2\n</think>\n\nvisible 2"}]},
    {"name": "reasoning_field_alias", "add_generation_prompt": False,
     "messages": [{"role": "user", "content": "Q"},
                  {"role": "assistant", "content": "A", "reasoning": "via the 'reasoning' field"}]},
    {"name": "content_parts_and_null", "add_generation_prompt": True,
     "messages": [{"role": "system", "content": [{"type": "text", "text": "System "}, {"type": "text", "text": "in parts."}]},
                  {"role": "user", "content": [{"type": "text", "text": "Part one, "}, {"type": "text", "text": "part two."}]},
                  {"role": "assistant", "content": None},
                  {"role": "user", "content": "Again."}]},
    {"name": "vision_placeholders_with_ids", "add_generation_prompt": True,
     "kwargs": {"add_vision_id": True},
     "messages": [{"role": "user", "content": [{"type": "image", "image": "x.png"}, {"type": "text", "text": "and"},
                                               {"type": "image_url", "image_url": {"url": "y.png"}},
                                               {"type": "video", "video": "z.mp4"}, {"type": "text", "text": "?"}]}]},
    {"name": "tools_system_prompt", "add_generation_prompt": True, "tools": [WEATHER, SEARCH],
     "messages": [{"role": "system", "content": "Use tools when needed."},
                  {"role": "user", "content": "Che tempo fa a Roma?"}]},
    {"name": "tools_without_system", "add_generation_prompt": True, "tools": [SEARCH],
     "kwargs": {"enable_thinking": False},
     "messages": [{"role": "user", "content": "Search for kiln."}]},
    {"name": "tool_call_history_and_responses", "add_generation_prompt": True, "tools": [WEATHER, SEARCH],
     "messages": [{"role": "user", "content": "Weather in Rome and news?"},
                  {"role": "assistant", "content": "Let me check.", "reasoning_content": "Need two tools.",
                   "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": ARGS}},
                                  {"id": "c2", "type": "function", "function": {"name": "search", "arguments": {"q": "Roma notizie", "k": 5}}}]},
                  {"role": "tool", "tool_call_id": "c1", "content": "{\"temp\": 21, \"sky\": \"sereno\"}"},
                  {"role": "tool", "tool_call_id": "c2", "content": "Nessuna notizia."}]},
    {"name": "tool_call_without_content_then_answer", "add_generation_prompt": False, "tools": [SEARCH],
     "messages": [{"role": "user", "content": "Find it."},
                  {"role": "assistant", "content": "",
                   "tool_calls": [{"type": "function", "function": {"name": "search", "arguments": {"q": "it"}}}]},
                  {"role": "tool", "content": "found"},
                  {"role": "assistant", "content": "It is found.", "reasoning_content": "done"}]},
    {"name": "multi_step_tools", "add_generation_prompt": True, "tools": [SEARCH],
     "messages": [{"role": "user", "content": "Deep search."},
                  {"role": "assistant", "content": None, "reasoning_content": "step 1",
                   "tool_calls": [{"function": {"name": "search", "arguments": {"q": "one"}}}]},
                  {"role": "tool", "content": "r1"},
                  {"role": "assistant", "content": "", "reasoning_content": "step 2",
                   "tool_calls": [{"function": {"name": "search", "arguments": {"q": "two"}}}]},
                  {"role": "tool", "content": "r2"}]},
    {"name": "user_message_that_is_a_tool_response", "add_generation_prompt": True,
     "messages": [{"role": "user", "content": "Real query"},
                  {"role": "assistant", "content": "A", "reasoning_content": "R"},
                  {"role": "user", "content": "<tool_response>\nx\n</tool_response>"}]},
    {"name": "special_characters_in_content", "add_generation_prompt": True,
     "messages": [{"role": "user", "content": "{{ not a template }} {% raw %} <|im_end|> \\n \t tab e\u0301 👩\u200d💻"}]},
    {"name": "openai_client_second_turn", "add_generation_prompt": True, "tools": [WEATHER],
     "kwargs": {"enable_thinking": False},
     "messages": [{"role": "user", "content": "What's the weather like in Boston today?"},
                  {"role": "assistant", "content": None,
                   "tool_calls": [{"id": "call_abc", "type": "function",
                                   "function": {"name": "get_weather", "arguments": {"city": "Boston, MA", "unit": "fahrenheit"}}}]},
                  {"role": "tool", "tool_call_id": "call_abc", "content": "{\"temperature\": 72}"}]},
    {"name": "parallel_calls_results_then_new_question", "add_generation_prompt": True, "tools": [WEATHER, SEARCH],
     "messages": [{"role": "system", "content": "Be helpful."},
                  {"role": "user", "content": "Rome and Paris?"},
                  {"role": "assistant", "content": "Two lookups.\n",
                   "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Roma"}}},
                                  {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}]},
                  {"role": "tool", "content": "sunny"},
                  {"role": "tool", "content": "rain\nlater"},
                  {"role": "assistant", "content": "Rome: sunny. Paris: rain.", "reasoning_content": "combine"},
                  {"role": "user", "content": "And Oslo?"}]},
    {"name": "tool_call_argument_values", "add_generation_prompt": False, "tools": [SEARCH],
     "messages": [{"role": "user", "content": "Q"},
                  {"role": "assistant", "content": "",
                   "tool_calls": [{"type": "function", "function": {"name": "search", "arguments": {
                       "q": "multi\nline  text ", "k": 0, "f": -1.5e-07, "big": 12345678901234567890, "b": False,
                       "nested": {"a": [1, {"b": None}], "é": "ü"}, "empty": "", "list": []}}}]},
                  {"role": "tool", "content": ""}]},
    # errors: the template's raise_exception text
    {"name": "error_no_messages", "add_generation_prompt": True, "messages": []},
    {"name": "error_system_not_first", "add_generation_prompt": True,
     "messages": [{"role": "user", "content": "hi"}, {"role": "system", "content": "late"}]},
    {"name": "error_no_user_query", "add_generation_prompt": True,
     "messages": [{"role": "system", "content": "only system"}]},
    {"name": "error_unknown_role", "add_generation_prompt": True,
     "messages": [{"role": "user", "content": "hi"}, {"role": "narrator", "content": "..."}]},
    {"name": "error_image_in_system", "add_generation_prompt": True,
     "messages": [{"role": "system", "content": [{"type": "image", "image": "x.png"}]}, {"role": "user", "content": "hi"}]},
]


# Python string / dict methods and value printing, each through HF's renderer with a
# one-line template (tests/chat_template.rs renders them with kiln's environment).
METHOD_VARS = {"ws": "\x1c\t hi \x1f\n", "ab": "abcba", "u": "aéxé x", "csv": "a,b,,c", "words": "  one two  three ",
               "lines": "l1\nl2\r\nl3", "title": "hello wORLD-x", "d": {"y": 1, "x": [2, "é"], "z": None},
               "l": ["p", "q"], "f": 1e20, "g": 0.1, "t": True, "n": None}
METHOD_CASES = [
    ("strip_python_whitespace", "[{{ ws.strip() }}][{{ ws.lstrip() }}][{{ ws.rstrip() }}][{{ ab.strip('ac') }}][{{ ab.lstrip('ab') }}][{{ ab.rstrip('a') }}]"),
    ("find_counts_characters", "{{ u.find('x') }} {{ u.rfind('é') }} {{ u.find('zz') }} {{ ab.count('b') }}"),
    ("join_and_split", "{{ '-'.join(l) }}|{{ csv.split(',') }}|{{ csv.split(',', 1) }}|{{ words.split() }}|{{ words.split(None, 1) }}|{{ lines.splitlines() }}"),
    ("predicates", "{{ ''.isspace() }} {{ ' '.isspace() }} {{ 'ab1'.islower() }} {{ 'AB!'.isupper() }} {{ '12'.isdigit() }} {{ ''.isalpha() }} {{ 'x1'.isalnum() }}"),
    ("affixes", "{{ ab.startswith('ab') }} {{ ab.endswith('cb') }} {{ ab.startswith(('zz', 'abc')) }} {{ ab.endswith(('q',)) }}"),
    ("case_and_replace", "{{ title.upper() }}|{{ title.lower() }}|{{ title.title() }}|{{ title.capitalize() }}|{{ ab.replace('b', 'B') }}|{{ ab.replace('b', 'B', 1) }}"),
    ("dict_methods", "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}|{% for k in d.keys() %}{{ k }}{% endfor %}|{% for v in d.values() %}{{ v }}{% endfor %}|{{ d.get('x') }}|{{ d.get('nope', 7) }}|{{ d.get('nope') }}"),
    ("python_values", "{{ t }} {{ n }} {{ f }} {{ g }} {{ d }} {{ l }} {{ t|string }} {{ ws|trim }}"),
    ("tojson", "{{ d|tojson }}|{{ d|tojson(indent=2) }}|{{ l|tojson(separators=(',', ':')) }}|{{ d|tojson(sort_keys=true) }}|{{ f|tojson }}|{{ u|tojson(ensure_ascii=true) }}"),
]


def method_cases(template_kwargs):
    out = []
    for name, template in METHOD_CASES:
        text = render_jinja_template(conversations=[[{"role": "user", "content": "x"}]], chat_template=template,
                                     **template_kwargs, **METHOD_VARS)[0][0]
        out.append({"name": name, "template": template, "rendered": text})
    return out


def main():
    with open(os.path.join(ASSETS, "chat_template.jinja"), encoding="utf-8") as f:
        template = f.read()
    tok = PreTrainedTokenizerFast(
        tokenizer_file=os.path.join(ASSETS, "tokenizer.json"),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=template,
    )
    out_cases = []
    for case in CASES:
        kwargs = case.get("kwargs", {})
        rec = {
            "name": case["name"],
            "messages": case["messages"],
            "tools": case.get("tools"),
            "add_generation_prompt": case["add_generation_prompt"],
            "kwargs": kwargs,
        }
        try:
            text = tok.apply_chat_template(
                case["messages"],
                tools=case.get("tools"),
                add_generation_prompt=case["add_generation_prompt"],
                tokenize=False,
                **kwargs,
            )
        except jinja2.exceptions.TemplateError as e:
            assert case["name"].startswith("error_"), (case["name"], e)
            rec["error"] = str(e)
        except ValueError as e:
            # apply_chat_template refuses an empty conversation before rendering; record
            # what the template itself raises, through the same rendering function.
            assert not case["messages"], (case["name"], e)
            try:
                render_jinja_template(conversations=[case["messages"]], tools=case.get("tools"),
                                      chat_template=template,
                                      add_generation_prompt=case["add_generation_prompt"], **kwargs)
            except jinja2.exceptions.TemplateError as e2:
                rec["error"] = str(e2)
                rec["note"] = f"apply_chat_template itself raises ValueError first: {e}"
            else:
                raise AssertionError("empty conversation rendered")
        else:
            assert not case["name"].startswith("error_"), case["name"]
            rec["rendered"] = text
            rec["token_ids"] = tok.encode(text, add_special_tokens=False)
        out_cases.append(rec)
    doc = {
        "_about": "Hugging Face renderings of assets/qwen3_5/chat_template.jinja, made by "
        "scripts/make_chat_fixtures.py with PreTrainedTokenizerFast.apply_chat_template(tokenize=False); "
        "token_ids are tokenizer.encode(rendered, add_special_tokens=False) with assets/qwen3_5/tokenizer.json.",
        "generator": {
            "transformers": transformers.__version__,
            "jinja2": jinja2.__version__,
            "tokenizers": tokenizers.__version__,
        },
        "cases": out_cases,
        "method_vars": METHOD_VARS,
        "method_cases": method_cases({"eos_token": tok.eos_token, "pad_token": tok.pad_token}),
    }
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {len(out_cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
