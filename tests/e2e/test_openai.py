"""The official `openai` Python package against a running `agora devnet`.

Usage: python tests/e2e/test_openai.py DEVNET_DIR   (the folder holding devnet.json)
"""

import json
import sys
import unittest

import openai

DEVNET = {}


def client(key=None):
    return openai.OpenAI(
        base_url=DEVNET["endpoint"] + "/v1",
        api_key=key or DEVNET["api_key"],
        max_retries=0,
        timeout=120,
    )


class OpenAIClient(unittest.TestCase):
    def test_list_models(self):
        models = client().models.list().data
        ids = [m.id for m in models]
        self.assertIn(DEVNET["model"], ids)

    def test_chat(self):
        r = client().chat.completions.create(
            model=DEVNET["model"],
            messages=[{"role": "user", "content": "Speak, ROMEO."}],
            max_tokens=20,
            seed=3,
        )
        self.assertEqual(r.object, "chat.completion")
        self.assertEqual(r.choices[0].message.role, "assistant")
        self.assertTrue(r.choices[0].message.content)
        self.assertIn(r.choices[0].finish_reason, ("stop", "length"))
        self.assertGreater(r.usage.prompt_tokens, 0)
        self.assertGreater(r.usage.completion_tokens, 0)
        self.assertEqual(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens)

    def test_chat_streaming(self):
        stream = client().chat.completions.create(
            model=DEVNET["model"],
            messages=[{"role": "user", "content": "Tell a tale."}],
            max_tokens=30,
            seed=4,
            stream=True,
            stream_options={"include_usage": True},
        )
        text, usage, finish = "", None, None
        for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
            if chunk.usage:
                usage = chunk.usage
        self.assertTrue(text)
        self.assertIn(finish, ("stop", "length"))
        self.assertIsNotNone(usage)
        self.assertGreater(usage.completion_tokens, 0)

    def test_streamed_and_whole_agree_for_a_seed(self):
        args = dict(
            model=DEVNET["model"],
            messages=[{"role": "user", "content": "Who goes there?"}],
            max_tokens=25,
            seed=7,
        )
        whole = client().chat.completions.create(**args).choices[0].message.content
        streamed = "".join(
            c.choices[0].delta.content or ""
            for c in client().chat.completions.create(stream=True, **args)
            if c.choices
        )
        self.assertEqual(whole, streamed)

    def test_completions(self):
        r = client().completions.create(model=DEVNET["model"], prompt="ROMEO.\n", max_tokens=16, seed=1)
        self.assertEqual(r.object, "text_completion")
        self.assertTrue(r.choices[0].text)
        self.assertGreater(r.usage.completion_tokens, 0)
        streamed = "".join(
            c.choices[0].text
            for c in client().completions.create(
                model=DEVNET["model"], prompt="ROMEO.\n", max_tokens=16, seed=1, stream=True
            )
            if c.choices
        )
        self.assertEqual(streamed, r.choices[0].text)

    def test_bad_key_is_401(self):
        with self.assertRaises(openai.AuthenticationError) as e:
            client("sk-agora-" + "0" * 48).models.list()
        self.assertEqual(e.exception.status_code, 401)

    def test_unknown_model_is_404(self):
        with self.assertRaises(openai.NotFoundError) as e:
            client().chat.completions.create(
                model="no-such-model", messages=[{"role": "user", "content": "hi"}], max_tokens=4
            )
        self.assertEqual(e.exception.status_code, 404)
        self.assertEqual(e.exception.code, "model_not_found")

    def test_oversized_prompt_is_400(self):
        with self.assertRaises(openai.BadRequestError) as e:
            client().chat.completions.create(
                model=DEVNET["model"],
                messages=[{"role": "user", "content": "word " * 5000}],
                max_tokens=4,
            )
        self.assertEqual(e.exception.status_code, 400)

    def test_prompt_over_the_context_is_400(self):
        # Under the gateway's byte limit but longer than the model's 256-token context.
        with self.assertRaises(openai.BadRequestError) as e:
            client().completions.create(model=DEVNET["model"], prompt="ROMEO. " * 300, max_tokens=4)
        self.assertEqual(e.exception.code, "context_length_exceeded")

    def test_absurd_max_tokens_is_400(self):
        with self.assertRaises(openai.BadRequestError):
            client().chat.completions.create(
                model=DEVNET["model"], messages=[{"role": "user", "content": "hi"}], max_tokens=10**9
            )


if __name__ == "__main__":
    with open(sys.argv[1] + "/devnet.json") as f:
        DEVNET.update(json.load(f))
    unittest.main(argv=sys.argv[:1], verbosity=2)
