"""The explorer in a real browser, and /metrics of every process, against a running devnet
with a cheater (`agora devnet --cheater --epoch-secs 4`, built with `--features adversary`).

Headless Chromium (Debian's `chromium` and `chromium-driver`) through Selenium opens the
gateway's explorer and checks, in order:
  1. the three honest providers (and the cheater) are listed with their prices;
  2. a request made through the API appears on the requests page with its receipt, and the
     receipt's page shows it;
  3. the cheater's slash appears on the open providers page without a reload (a marker set
     on the page survives; the page counts the live updates it applied);
and it writes screenshots of the main pages into an artifact folder it prints.
Every process's /metrics is parsed by the Prometheus project's own OpenMetrics parser, and
its counters must move when requests are served.

Usage: python3 tests/e2e/test_explorer.py DEVNET_DIR [ARTIFACT_DIR]
"""

import json
import os
import sys
import time
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service


def get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.headers, r.read().decode()


def metrics(url):
    """Parses a /metrics page; returns {(sample name, frozenset(labels)): value}."""
    status, headers, body = get(url)
    assert status == 200, (url, status)
    assert headers["Content-Type"].startswith("application/openmetrics-text"), headers["Content-Type"]
    out = {}
    families = list(text_string_to_metric_families(body))
    assert families, f"{url}: no metric families"
    for fam in families:
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def total(samples, name, **labels):
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def chat(info, seed):
    body = json.dumps({
        "model": info["model"],
        "messages": [{"role": "user", "content": "Speak, ROMEO."}],
        "max_tokens": 12,
        "seed": seed,
    }).encode()
    req = urllib.request.Request(
        info["endpoint"] + "/v1/chat/completions",
        data=body,
        headers={"Authorization": "Bearer " + info["api_key"], "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def wait_for(what, check, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def main():
    devnet_dir = sys.argv[1]
    artifacts = sys.argv[2] if len(sys.argv) > 2 else os.path.join(devnet_dir, "explorer-screenshots")
    os.makedirs(artifacts, exist_ok=True)
    info = json.load(open(os.path.join(devnet_dir, "devnet.json")))
    explorer = info["explorer"]
    names = {p["account"]: p["name"] for p in info["providers"]}
    cheater = next(p["account"] for p in info["providers"] if p["name"] == "cheater")

    # /metrics before any request.
    before = {name: metrics(url) for name, url in info["metrics"].items()}
    assert set(before) >= {"ledger", "gateway", "provider-1", "verifier-1"}, sorted(before)

    opts = Options()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        opts.add_argument(a)
    opts.page_load_strategy = "eager"
    opts.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    driver = webdriver.Chrome(service=Service(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")), options=opts)
    driver.set_page_load_timeout(90)
    shots = []

    def rows_text(table):
        """The rows of a table as text, read in one script (live updates swap the DOM)."""
        return driver.execute_script(
            "return [...document.querySelectorAll(arguments[0] + ' tbody tr')].map(r => r.innerText)", table)

    def shot(name):
        path = os.path.join(artifacts, name + ".png")
        driver.save_screenshot(path)
        shots.append(path)

    try:
        # 1. Every provider listed with its prices (the book hears offers within seconds).
        driver.get(explorer + "/providers")

        def listed():
            rows = rows_text("#providers")
            return all(any(acc[:12] in r for r in rows) for acc in names) and rows
        rows = wait_for("every provider on the providers page", listed, 60)
        for p in (p for p in info["providers"] if p["name"] != "cheater"):
            row = next(r for r in rows if p["account"][:12] in r)
            assert p["price_out"] in row and p["price_in"] in row, (p["name"], row)
        print(f"providers listed with prices: {sorted(names.values())}")
        shot("providers")
        # This page stays open in its own tab from before the cheater serves anything.
        driver.execute_script("window.__agoraMarker = 'still the same page';")
        providers_tab = driver.current_window_handle
        driver.switch_to.new_window("tab")

        # 2. A request through the API appears with its receipt.
        answer = chat(info, 1)
        request_id = answer.get("agora", {}).get("request_id") or answer["id"].split("-", 1)[-1]
        receipts = answer.get("receipts") or answer.get("agora", {}).get("receipts") or []
        driver.get(explorer + "/requests")
        wait_for("the request on the requests page", lambda: any(request_id[:12] in r for r in rows_text("#requests")), 30)
        # Read the link in one script: a live update may swap the table at any moment.
        href, receipt_hash = driver.execute_script(
            "const row=[...document.querySelectorAll('#requests tbody tr')].find(r=>r.innerText.includes(arguments[0]));"
            "const a=row.querySelector('a.receipt');return [a.href, a.querySelector('code').title];",
            request_id[:12])
        shot("requests")
        driver.get(href)
        wait_for("the receipt page", lambda: "Receipts behind it" in driver.page_source, 10)
        assert any(receipt_hash in r for r in rows_text("#receipts")), receipt_hash
        if receipts:
            assert any(r.get("receipt") == receipt_hash for r in receipts), receipts
        print(f"request {request_id} listed with receipt {receipt_hash}")
        shot("receipt")
        for seed in range(2, 6):
            chat(info, seed)

        # 3. The slash appears live on the page opened before it happened, without a reload.
        driver.close()
        driver.switch_to.window(providers_tab)

        def slashed():
            return driver.execute_script(
                "const row=[...document.querySelectorAll('#providers tbody tr')].find(r=>r.innerText.includes(arguments[0]));"
                "return !!(row && row.querySelector('.slashes'));",
                cheater[:12])
        wait_for("the cheater's slash on the open providers page", slashed, 150)
        assert driver.execute_script("return window.__agoraMarker") == "still the same page", "the page reloaded"
        updates = int(driver.execute_script("return document.documentElement.getAttribute('data-updates')") or 0)
        assert updates > 0, "no live update was applied"
        print(f"slash shown live after {updates} server-sent updates, no reload")
        shot("providers-slashed")

        for page in ["", "/audits", "/models", "/verifiers", "/blocks", "/epochs"]:
            driver.get(explorer + page)
            time.sleep(0.5)
            shot("overview" if page == "" else page.strip("/"))
        driver.get(explorer + "/audits")
        assert "SLASHED" in driver.page_source, "the audits page shows no verdict"
        # Phone width: the tables scroll inside their box, the page does not.
        driver.set_window_size(390, 844)
        driver.get(explorer + "/providers")
        width = driver.execute_script("return document.documentElement.scrollWidth")
        assert width <= 400, f"the page is {width}px wide on a phone"
        shot("phone-providers")
        # Without JavaScript the tables are there in the HTML itself.
        status, headers, html = get(explorer + "/providers")
        assert cheater in html and "script-src 'self'" in headers["Content-Security-Policy"]
    finally:
        driver.quit()

    # /metrics after: parsed again, counters moved.
    after = {name: metrics(url) for name, url in info["metrics"].items()}
    moved = {
        ("gateway", "agora_gateway_jobs_total"): {"outcome": "completed"},
        ("gateway", "agora_gateway_tokens_out_total"): {},
        ("gateway", "agora_gateway_time_to_first_token_seconds_count"): {},
        ("gateway", "agora_http_requests_total"): {"route": "/v1/chat/completions", "status": "200"},
        ("ledger", "agora_ledger_txs_total"): {},
        ("ledger", "agora_ledger_slashes_total"): {"kind": "fraud"},
        ("cheater", "agora_provider_tokens_out_total"): {},
        ("cheater", "agora_provider_requests_total"): {"outcome": "served"},
        ("verifier-1", "agora_verifier_audits_total"): {},
    }
    for (proc, name), labels in moved.items():
        b, a = total(before[proc], name, **labels), total(after[proc], name, **labels)
        assert a > b, f"{proc} {name}{labels} did not move: {b} -> {a}"
    print("every /metrics parses as OpenMetrics text; counters moved: " + ", ".join(f"{p}:{n}" for p, n in moved))
    print(f"screenshots in {artifacts}: {', '.join(os.path.basename(s) for s in shots)}")


if __name__ == "__main__":
    main()
