"""Tools, structured output and logprobs with the official `openai` and `anthropic` packages
against a devnet serving SmolLM2-135M-Instruct.

Usage: python tests/e2e/test_structured.py DEVNET_DIR   (a devnet started with
`--model $AGORA_SMOLLM2`; scripts/e2e-structured starts one). Skips unless AGORA_SMOLLM2 is set.
"""

import json
import os
import sys
import unittest

import anthropic
import openai

DEVNET = {}

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "languages": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    },
    "required": ["name", "age", "languages"],
    "additionalProperties": False,
}


def client():
    return openai.OpenAI(
        base_url=DEVNET["endpoint"] + "/v1", api_key=DEVNET["api_key"], max_retries=0, timeout=300
    )


def valid_person(v):
    """The schema's rules, checked independently of the gateway."""
    return (
        isinstance(v, dict)
        and set(v) == {"name", "age", "languages"}
        and isinstance(v["name"], str)
        and isinstance(v["age"], int)
        and isinstance(v["languages"], list)
        and len(v["languages"]) <= 3
        and all(isinstance(x, str) for x in v["languages"])
    )


@unittest.skipUnless(os.environ.get("AGORA_SMOLLM2"), "set AGORA_SMOLLM2 to run against SmolLM2")
class Structured(unittest.TestCase):
    def test_tool_call_round_trip(self):
        messages = [{"role": "user", "content": "What is the weather in Paris?"}]
        first = client().chat.completions.create(
            model=DEVNET["model"],
            messages=messages,
            tools=[WEATHER],
            tool_choice="required",
            max_tokens=60,
            seed=1,
        )
        choice = first.choices[0]
        self.assertEqual(choice.finish_reason, "tool_calls")
        call = choice.message.tool_calls[0]
        self.assertEqual(call.type, "function")
        self.assertEqual(call.function.name, "get_weather")
        args = json.loads(call.function.arguments)
        self.assertIsInstance(args["city"], str)
        messages.append(choice.message.model_dump(exclude_none=True))
        messages.append({"role": "tool", "tool_call_id": call.id, "content": "18 C, sunny"})
        final = client().chat.completions.create(
            model=DEVNET["model"], messages=messages, tools=[WEATHER], tool_choice="none",
            max_tokens=40, seed=2,
        )
        self.assertTrue(final.choices[0].message.content)
        self.assertFalse(final.choices[0].message.tool_calls)

    def test_streamed_tool_call(self):
        stream = client().chat.completions.create(
            model=DEVNET["model"],
            messages=[{"role": "user", "content": "Weather in Oslo?"}],
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            max_tokens=60,
            seed=3,
            stream=True,
        )
        name, args, finish = "", "", None
        for chunk in stream:
            if not chunk.choices:
                continue
            d = chunk.choices[0].delta
            for tc in d.tool_calls or []:
                name += tc.function.name or ""
                args += tc.function.arguments or ""
            finish = chunk.choices[0].finish_reason or finish
        self.assertEqual(name, "get_weather")
        self.assertIsInstance(json.loads(args)["city"], str)
        self.assertEqual(finish, "tool_calls")

    def test_json_schema_output_parses_and_validates(self):
        r = client().chat.completions.create(
            model=DEVNET["model"],
            messages=[{"role": "user", "content": "Describe a programmer as JSON."}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "person", "schema": PERSON, "strict": True},
            },
            max_tokens=120,
            seed=4,
        )
        self.assertEqual(r.choices[0].finish_reason, "stop", r.choices[0].message.content)
        self.assertTrue(valid_person(json.loads(r.choices[0].message.content)))

    def test_n_2_choices_each_meet_the_schema(self):
        verdict = {
            "type": "object",
            "properties": {"answer": {"enum": ["yes", "no"]}},
            "required": ["answer"],
            "additionalProperties": False,
        }
        r = client().chat.completions.create(
            model=DEVNET["model"],
            messages=[{"role": "user", "content": "Is Paris in France? Answer as JSON."}],
            response_format={"type": "json_schema", "json_schema": {"name": "verdict", "schema": verdict}},
            n=2,
            max_tokens=30,
            seed=6,
        )
        self.assertEqual([c.index for c in r.choices], [0, 1])
        for c in r.choices:
            self.assertEqual(c.finish_reason, "stop", c.message.content)
            self.assertIn(json.loads(c.message.content)["answer"], ("yes", "no"))
        # Each choice is its own job with its own receipt.
        self.assertEqual(len({x["receipt"] for x in r.model_extra["agora"]["receipts"]}), 2)

    def test_unsupported_schema_feature_is_a_400_naming_it(self):
        with self.assertRaises(openai.BadRequestError) as e:
            client().chat.completions.create(
                model=DEVNET["model"],
                messages=[{"role": "user", "content": "hi"}],
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "^a"}},
                },
            )
        self.assertIn("pattern", str(e.exception))

    def test_logprobs(self):
        r = client().chat.completions.create(
            model=DEVNET["model"],
            messages=[{"role": "user", "content": "Say hello."}],
            logprobs=True,
            top_logprobs=3,
            max_tokens=8,
            seed=5,
        )
        content = r.choices[0].logprobs.content
        self.assertEqual(len(content), r.usage.completion_tokens)
        for t in content:
            self.assertLessEqual(t.logprob, 0.0)
            self.assertEqual(len(t.top_logprobs), 3)
            self.assertGreaterEqual(t.top_logprobs[0].logprob, t.top_logprobs[-1].logprob)
        self.assertEqual("".join(t.token for t in content), r.choices[0].message.content)
        stream = client().chat.completions.create(
            model=DEVNET["model"],
            messages=[{"role": "user", "content": "Say hello."}],
            logprobs=True,
            max_tokens=8,
            seed=5,
            stream=True,
        )
        streamed = [t for c in stream if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
        self.assertEqual([t.token for t in streamed], [t.token for t in content])


WEATHER_ANTHROPIC = {
    "name": "get_weather",
    "description": "The current weather in a city.",
    "input_schema": WEATHER["function"]["parameters"],
}


def claude():
    return anthropic.Anthropic(
        base_url=DEVNET["endpoint"], api_key=DEVNET["api_key"], max_retries=0, timeout=300
    )


@unittest.skipUnless(os.environ.get("AGORA_SMOLLM2"), "set AGORA_SMOLLM2 to run against SmolLM2")
class AnthropicTools(unittest.TestCase):
    def finish(self, messages, call):
        """Sends the tool's result back and checks the final answer is text."""
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call.id, "content": "18 C, sunny"}]})
        final = claude().messages.create(
            model=DEVNET["model"], max_tokens=30, tools=[WEATHER_ANTHROPIC],
            tool_choice={"type": "none"}, messages=messages,
        )
        self.assertEqual(final.content[0].type, "text")
        self.assertTrue(final.content[0].text)
        self.assertIn(final.stop_reason, ("end_turn", "max_tokens"))
        self.assertFalse([b for b in final.content if b.type == "tool_use"])

    def test_tool_use_round_trip(self):
        messages = [{"role": "user", "content": "What is the weather in Paris?"}]
        m = claude().messages.create(
            model=DEVNET["model"], max_tokens=80, tools=[WEATHER_ANTHROPIC],
            tool_choice={"type": "any"}, messages=messages,
            # Greedy, so the call always closes well inside max_tokens (a sampled city can
            # run on and leave the call cut off, which then comes back as text).
            extra_body={"temperature": 0},
        )
        self.assertEqual(m.stop_reason, "tool_use")
        calls = [b for b in m.content if b.type == "tool_use"]
        self.assertEqual(len(calls), 1)
        self.assertEqual(calls[0].name, "get_weather")
        self.assertIsInstance(calls[0].input["city"], str)
        self.assertTrue(calls[0].id.startswith("toolu_"))
        messages.append({"role": "assistant", "content": m.content})
        self.finish(messages, calls[0])

    def test_streamed_tool_use_round_trip(self):
        messages = [{"role": "user", "content": "Weather in Oslo?"}]
        with claude().messages.stream(
            model=DEVNET["model"], max_tokens=80, tools=[WEATHER_ANTHROPIC],
            tool_choice={"type": "tool", "name": "get_weather"}, messages=messages,
            extra_body={"temperature": 0},
        ) as s:
            kinds = [e.type for e in s]
            m = s.get_final_message()
        self.assertIn("input_json", kinds)
        self.assertEqual(m.stop_reason, "tool_use")
        call = [b for b in m.content if b.type == "tool_use"][0]
        self.assertEqual(call.name, "get_weather")
        self.assertIsInstance(call.input["city"], str)
        messages.append({"role": "assistant", "content": m.content})
        # The final answer streamed too.
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call.id, "content": "-3 C, snow"}]})
        with claude().messages.stream(
            model=DEVNET["model"], max_tokens=30, messages=messages,
        ) as s:
            text = "".join(s.text_stream)
            final = s.get_final_message()
        self.assertTrue(text)
        self.assertEqual(final.content[0].text, text)


@unittest.skipUnless(os.environ.get("AGORA_SMOLLM2"), "set AGORA_SMOLLM2 to run against SmolLM2")
class Capabilities(unittest.TestCase):
    def test_supported_parameters_follow_the_providers_offers(self):
        m = {x.id: x.model_extra for x in client().models.list().data}[DEVNET["model"]]
        for p in ("tools", "tool_choice", "response_format", "logprobs", "top_logprobs"):
            self.assertIn(p, m["supported_parameters"])


if __name__ == "__main__":
    if len(sys.argv) > 1:
        with open(os.path.join(sys.argv[1], "devnet.json")) as f:
            DEVNET.update(json.load(f))
    unittest.main(argv=sys.argv[:1])
