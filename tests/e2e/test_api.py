"""Agora's API beyond the basics, with the official `openai` and `anthropic` packages, against
a running `agora devnet`: several models, model metadata, reconcilable usage and receipts,
n > 1, routing controls, spending keys and the Anthropic Messages dialect.

Usage: python tests/e2e/test_api.py DEVNET_DIR   (the folder holding devnet.json)
The SmolLM2 tests skip unless the devnet serves SmolLM2 (AGORA_SMOLLM2 set for scripts/test).
"""

import json
import sys
import unittest

import openai

DEVNET = {}
SMOL = "SmolLM2-135M-Instruct.Q4_1"


def client(key=None):
    return openai.OpenAI(
        base_url=DEVNET["endpoint"] + "/v1",
        api_key=key or DEVNET["api_key"],
        max_retries=0,
        timeout=120,
    )


def served(name):
    return any(m["name"] == name for m in DEVNET.get("models", []))


class Models(unittest.TestCase):
    def test_model_selected_by_name_or_model_id(self):
        if not served(SMOL):
            self.skipTest("the devnet does not serve SmolLM2 (set AGORA_SMOLLM2)")
        models = {m.id: m for m in client().models.list().data}
        self.assertIn(SMOL, models)
        self.assertIn(DEVNET["model"], models)
        smol_id = models[SMOL].model_extra["model_id"]
        for name in (SMOL, smol_id):
            r = client().chat.completions.create(
                model=name,
                messages=[{"role": "user", "content": "What is the capital of France?"}],
                max_tokens=12,
                seed=1,
            )
            self.assertTrue(r.choices[0].message.content)
            # The answer names the model the request named (by name or id).
            self.assertEqual(r.model, name)
            # Served by a SmolLM2 provider, not the Shakespeare one.
            providers = {p["account"]: p for p in DEVNET["providers"]}
            served_by = r.model_extra["agora"]["receipts"][-1]["provider"]
            self.assertEqual(providers[served_by]["model"], SMOL)


if __name__ == "__main__":
    with open(sys.argv[1] + "/devnet.json") as f:
        DEVNET.update(json.load(f))
    unittest.main(argv=sys.argv[:1], verbosity=2)
