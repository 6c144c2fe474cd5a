"""Agora's API beyond the basics, with the official `openai` and `anthropic` packages, against
a running `agora devnet`: several models, model metadata, reconcilable usage and receipts,
n > 1, routing controls, spending keys and the Anthropic Messages dialect.

Usage: python tests/e2e/test_api.py DEVNET_DIR   (the folder holding devnet.json)
The SmolLM2 tests skip unless the devnet serves SmolLM2 (AGORA_SMOLLM2 set for scripts/test).
"""

import concurrent.futures
import json
import struct
import sys
import unittest
import urllib.error
import urllib.request

import anthropic
import blake3
import openai
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

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


def http(method, path, key=None, body=None):
    """A raw request to the gateway: (status, headers, JSON body)."""
    req = urllib.request.Request(
        DEVNET["endpoint"] + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + (key or DEVNET["api_key"]), "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.headers, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.load(e)


def shakespeare_providers():
    """The devnet's providers of the shipped model, cheapest first."""
    ps = [p for p in DEVNET["providers"] if p.get("model", DEVNET["model"]) == DEVNET["model"] and p["name"].startswith("provider")]
    return sorted(ps, key=lambda p: int(p["price_in"]))


def ask(key=None, **kw):
    args = dict(model=DEVNET["model"], messages=[{"role": "user", "content": "Speak."}], max_tokens=4, seed=2)
    args.update(kw)
    return client(key).chat.completions.create(**args)


def mint(**body):
    status, _, v = http("POST", "/v1/keys", body=body)
    assert status == 200, v
    return v


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
                max_tokens=6,
                seed=1,
            )
            self.assertTrue(r.choices[0].message.content)
            # The answer names the model the request named (by name or id).
            self.assertEqual(r.model, name)
            # Served by a SmolLM2 provider, not the Shakespeare one.
            providers = {p["account"]: p for p in DEVNET["providers"]}
            served_by = r.model_extra["agora"]["receipts"][-1]["provider"]
            self.assertEqual(providers[served_by]["model"], SMOL)


    def test_models_list_prices_quantization_and_parameters(self):
        m = {x.id: x.model_extra for x in client().models.list().data}[DEVNET["model"]]
        ps = shakespeare_providers()
        self.assertEqual(m["providers"], len(ps))
        ins = sorted(int(p["price_in"]) for p in ps)
        outs = sorted(int(p["price_out"]) for p in ps)
        self.assertEqual(m["pricing"]["prompt"], {"lowest": str(ins[0]), "median": str(ins[(len(ins) - 1) // 2])})
        self.assertEqual(m["pricing"]["completion"], {"lowest": str(outs[0]), "median": str(outs[(len(outs) - 1) // 2])})
        self.assertTrue(m["quantization"])
        self.assertEqual(len(m["model_id"]), 64)
        self.assertGreater(m["context_length"], 0)
        self.assertIn("provider", m["supported_parameters"])


class Usage(unittest.TestCase):
    def test_usage_reconciles_with_a_receipt_anyone_can_verify(self):
        r = ask()
        u = r.usage.model_extra
        receipts = r.model_extra["agora"]["receipts"]
        self.assertEqual(int(u["cost"]), sum(int(x["charged"]) for x in receipts))
        self.assertEqual(u["receipt_id"], receipts[-1]["receipt"])
        self.assertEqual(u["provider"], receipts[-1]["provider"])
        status, _, doc = http("GET", "/v1/receipts/" + u["receipt_id"])
        self.assertEqual(status, 200, doc)
        # The provider's ed25519 signature over the signed message, checked here.
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(doc["provider"])).verify(
            bytes.fromhex(doc["signature"]), bytes.fromhex(doc["signed_message"])
        )
        # The message is the receipt's encoding under its domain; the id hashes the whole.
        domain = doc["signature_domain"].encode()
        self.assertTrue(bytes.fromhex(doc["signed_message"]).startswith(struct.pack("<I", len(domain)) + domain))
        id_domain = doc["id_domain"].encode()
        preimage = struct.pack("<I", len(id_domain)) + id_domain + bytes.fromhex(doc["encoded"])
        self.assertEqual(blake3.blake3(preimage).hexdigest(), u["receipt_id"])
        self.assertEqual(doc["receipt"]["output_tokens"], r.usage.completion_tokens)
        self.assertEqual(doc["receipt"]["provider"], u["provider"])
        # Another key cannot read it.
        other = mint(budget=1)["key"]
        status, _, err = http("GET", "/v1/receipts/" + u["receipt_id"], key=other)
        self.assertEqual(status, 404)
        self.assertEqual(err["error"]["code"], "receipt_not_found")

    def test_streamed_usage_carries_cost_and_receipt(self):
        usage = None
        for c in ask(stream=True, stream_options={"include_usage": True}):
            if c.usage:
                usage = c.usage.model_extra
        self.assertGreater(int(usage["cost"]), 0)
        self.assertEqual(len(usage["receipt_id"]), 64)


class Choices(unittest.TestCase):
    def test_n_2_whole_and_streamed(self):
        r = ask(n=2)
        self.assertEqual([c.index for c in r.choices], [0, 1])
        receipts = {x["receipt"] for x in r.model_extra["agora"]["receipts"]}
        self.assertGreaterEqual(len(receipts), 2)
        texts = {0: "", 1: ""}
        finished = set()
        for c in ask(n=2, stream=True):
            for ch in c.choices:
                texts[ch.index] += ch.delta.content or ""
                if ch.finish_reason:
                    finished.add(ch.index)
        self.assertEqual(finished, {0, 1})
        # Seed s for choice 0 and s + 1 for choice 1, whole or streamed alike.
        self.assertEqual(texts[0], r.choices[0].message.content)
        self.assertEqual(texts[1], r.choices[1].message.content)


class Routing(unittest.TestCase):
    def served_by(self, **provider):
        r = ask(extra_body={"provider": provider})
        return r.model_extra["agora"]["receipts"][-1]["provider"]

    def test_chosen_provider_matches_order_only_and_max_price(self):
        ps = shakespeare_providers()
        cheap, dear = ps[0]["account"], ps[-1]["account"]
        self.assertNotEqual(cheap, dear)
        self.assertEqual(self.served_by(order=[dear]), dear)
        self.assertEqual(self.served_by(only=[dear]), dear)
        self.assertNotEqual(self.served_by(ignore=[dear], sort="price"), dear)
        under = int(ps[-1]["price_in"]) - 1
        self.assertNotEqual(self.served_by(order=[dear], max_price={"prompt": under}), dear)
        with self.assertRaises(openai.NotFoundError) as e:
            ask(extra_body={"provider": {"only": [dear], "max_price": {"prompt": under}}})
        self.assertEqual(e.exception.code, "no_matching_provider")

    def test_quantizations_filter_models(self):
        q = {x.id: x.model_extra for x in client().models.list().data}[DEVNET["model"]]["quantization"]
        self.assertTrue(ask(extra_body={"provider": {"quantizations": [q.lower()]}}).choices)
        with self.assertRaises(openai.NotFoundError) as e:
            ask(extra_body={"provider": {"quantizations": ["IQ1_S"]}})
        self.assertEqual(e.exception.code, "no_matching_provider")

    def test_models_fallback(self):
        r = ask(model="no-such-model", extra_body={"models": [DEVNET["model"]]})
        self.assertEqual(r.model, DEVNET["model"])


class SpendingKeys(unittest.TestCase):
    def test_child_key_cannot_exceed_its_budget_under_50_concurrent_requests(self):
        # Each answer reserves its most cost (prompt + 4 tokens at the highest price) before
        # it may be paid; the budget covers only a few.
        child = mint(label="agent", budget=120)
        self.assertEqual(child["budget"], "120")

        def one(_):
            try:
                r = ask(key=child["key"])
                return 200, int(r.usage.model_extra["cost"])
            except openai.APIStatusError as e:
                body = e.response.json()
                self.assertEqual(set(body["error"]), {"message", "type", "param", "code"})
                return e.status_code, body["error"]["code"]

        with concurrent.futures.ThreadPoolExecutor(50) as pool:
            results = list(pool.map(one, range(50)))
        ok = [c for s, c in results if s == 200]
        refused = [(s, c) for s, c in results if s != 200]
        self.assertGreaterEqual(len(ok), 1, results)
        self.assertTrue(all(r == (402, "budget_exceeded") for r in refused), results)
        status, _, key = http("GET", "/v1/key", key=child["key"])
        self.assertEqual(status, 200)
        self.assertLessEqual(int(key["spent"]), 120)
        self.assertEqual(int(key["spent"]), sum(ok))
        self.assertEqual(key["reserved"], "0")

    def test_rate_limit_is_429_with_retry_after_and_grandchildren_are_smaller(self):
        child = mint(budget=1000, requests_per_minute=1)
        ask(key=child["key"])
        with self.assertRaises(openai.RateLimitError) as e:
            ask(key=child["key"])
        self.assertGreaterEqual(int(e.exception.response.headers["retry-after"]), 1)
        other = mint(budget=1000)
        status, _, err = http("POST", "/v1/keys", key=other["key"], body={"budget": 1001})
        self.assertEqual(status, 400)
        self.assertEqual(err["error"]["param"], "budget")


class Anthropic(unittest.TestCase):
    def client(self):
        return anthropic.Anthropic(base_url=DEVNET["endpoint"], api_key=DEVNET["api_key"], max_retries=0, timeout=120)

    def test_messages_whole_and_streamed(self):
        args = dict(model=DEVNET["model"], max_tokens=8, system="Be brief.", messages=[{"role": "user", "content": "Speak."}])
        m = self.client().messages.create(**args)
        self.assertEqual(m.role, "assistant")
        self.assertEqual(m.content[0].type, "text")
        self.assertIn(m.stop_reason, ("end_turn", "max_tokens"))
        self.assertGreater(m.usage.input_tokens, 0)
        self.assertGreater(m.usage.output_tokens, 0)
        with self.client().messages.stream(**args) as s:
            text = "".join(s.text_stream)
            final = s.get_final_message()
        self.assertTrue(text)
        self.assertGreater(final.usage.output_tokens, 0)
        self.assertIn(final.stop_reason, ("end_turn", "max_tokens"))
        self.assertEqual(final.content[0].text, text)

    def test_errors_map_to_anthropic_exceptions(self):
        with self.assertRaises(anthropic.NotFoundError):
            self.client().messages.create(model="no-such-model", max_tokens=4, messages=[{"role": "user", "content": "hi"}])
        with self.assertRaises(anthropic.AuthenticationError):
            anthropic.Anthropic(base_url=DEVNET["endpoint"], api_key="sk-agora-" + "0" * 48, max_retries=0).messages.create(
                model=DEVNET["model"], max_tokens=4, messages=[{"role": "user", "content": "hi"}]
            )


class Refusals(unittest.TestCase):
    """Every refusal in OpenAI's shape on the OpenAI routes and Anthropic's on /v1/messages,
    raised as the packages' usual exceptions."""

    def openai_shape(self, e, status, code):
        self.assertEqual(e.status_code, status)
        body = e.response.json()
        self.assertEqual(set(body["error"]), {"message", "type", "param", "code"}, body)
        self.assertEqual(body["error"]["code"], code, body)
        self.assertTrue(body["error"]["message"])

    def anthropic_shape(self, e, status, kind):
        self.assertEqual(e.status_code, status)
        body = e.response.json()
        self.assertEqual(body["type"], "error")
        self.assertEqual(body["error"]["type"], kind, body)
        self.assertTrue(body["error"]["message"])

    def claude(self, key=None):
        return anthropic.Anthropic(base_url=DEVNET["endpoint"], api_key=key or DEVNET["api_key"], max_retries=0, timeout=120)

    def test_openai_refusals(self):
        with self.assertRaises(openai.BadRequestError) as e:
            ask(temperature=3)
        self.openai_shape(e.exception, 400, "invalid_value")
        self.assertEqual(e.exception.param, "temperature")
        with self.assertRaises(openai.BadRequestError) as e:
            ask(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "format": "email"}}})
        self.openai_shape(e.exception, 400, "unsupported_schema_feature")
        with self.assertRaises(openai.APIStatusError) as e:
            ask(key=mint(budget=1)["key"])
        self.openai_shape(e.exception, 402, "budget_exceeded")
        with self.assertRaises(openai.PermissionDeniedError) as e:
            ask(key=mint(budget=1000, models=[DEVNET["model"]])["key"], model="another-model")
        self.openai_shape(e.exception, 403, "model_not_allowed")
        with self.assertRaises(openai.NotFoundError) as e:
            ask(model="no-such-model")
        self.openai_shape(e.exception, 404, "model_not_found")
        status, _, body = http("GET", "/v1/no-such-route")
        self.assertEqual((status, set(body["error"])), (404, {"message", "type", "param", "code"}))
        status, _, body = http("GET", "/v1/chat/completions")
        self.assertEqual((status, body["error"]["code"]), (405, "method_not_allowed"))
        child = mint(budget=1000, requests_per_minute=1)
        ask(key=child["key"])
        with self.assertRaises(openai.RateLimitError) as e:
            ask(key=child["key"])
        self.openai_shape(e.exception, 429, "rate_limit_exceeded")

    def test_anthropic_refusals(self):
        args = dict(model=DEVNET["model"], max_tokens=4, messages=[{"role": "user", "content": "Speak."}])
        with self.assertRaises(anthropic.BadRequestError) as e:
            self.claude().messages.create(**args, extra_body={"temperature": 1.5})
        self.anthropic_shape(e.exception, 400, "invalid_request_error")
        with self.assertRaises(anthropic.BadRequestError) as e:
            self.claude().messages.create(**args, tools=[{"name": "f", "input_schema": {"type": "string", "pattern": "a"}}])
        self.anthropic_shape(e.exception, 400, "invalid_request_error")
        self.assertIn("pattern", str(e.exception))
        with self.assertRaises(anthropic.APIStatusError) as e:
            self.claude(mint(budget=1)["key"]).messages.create(**args)
        self.anthropic_shape(e.exception, 402, "billing_error")
        with self.assertRaises(anthropic.PermissionDeniedError) as e:
            self.claude(mint(budget=1000, models=[DEVNET["model"]])["key"]).messages.create(**{**args, "model": "another-model"})
        self.anthropic_shape(e.exception, 403, "permission_error")
        with self.assertRaises(anthropic.NotFoundError) as e:
            self.claude().messages.create(**{**args, "model": "no-such-model"})
        self.anthropic_shape(e.exception, 404, "not_found_error")
        ps = shakespeare_providers()
        under = int(ps[0]["price_in"]) - 1
        with self.assertRaises(anthropic.NotFoundError) as e:
            self.claude().messages.create(**args, extra_body={"provider": {"max_price": {"prompt": under}}})
        self.anthropic_shape(e.exception, 404, "not_found_error")
        child = mint(budget=1000, requests_per_minute=1)
        self.claude(child["key"]).messages.create(**args)
        with self.assertRaises(anthropic.RateLimitError) as e:
            self.claude(child["key"]).messages.create(**args)
        self.anthropic_shape(e.exception, 429, "rate_limit_error")


if __name__ == "__main__":
    with open(sys.argv[1] + "/devnet.json") as f:
        DEVNET.update(json.load(f))
    unittest.main(argv=sys.argv[:1], verbosity=2)
