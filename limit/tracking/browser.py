"""Headless Chromium driven over the DevTools protocol: render a page, run JavaScript in it, take a screenshot.

The MLflow UI test and ``python -m limit.tracking.server --screenshot`` use it: the runs table only shows nested
runs once their parent row is expanded, which a plain ``chromium --dump-dom`` cannot do. Chromium (Debian's
``chromium``) runs with a throw-away profile, bound to loopback, and is stopped with its process group.
"""
import asyncio
import base64
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0"]


class Page:
    """One tab: ``await page.evaluate(js)`` returns the value of a JavaScript expression (promises awaited)."""

    def __init__(self, ws):
        self.ws = ws
        self.last_id = 0

    async def call(self, method, **params):
        self.last_id += 1
        await self.ws.send_str(json.dumps({"id": self.last_id, "method": method, "params": params}))
        while True:
            message = json.loads((await self.ws.receive()).data)
            if message.get("id") == self.last_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    async def evaluate(self, expression):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JavaScript error: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression, timeout=90):
        """Poll a JavaScript condition until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = await self.evaluate(expression)
            except RuntimeError:  # the page is still loading (no document.body yet)
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"page never satisfied: {expression}")
            await asyncio.sleep(0.5)

    async def screenshot(self, path):
        data = (await self.call("Page.captureScreenshot", format="png"))["data"]
        Path(path).write_bytes(base64.b64decode(data))


def run(url, script, width=1900, height=1100, timeout=180):
    """Open ``url`` in headless Chromium and return ``await script(page)``."""
    import aiohttp

    async def main(port):
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as response:
                target = next(t for t in await response.json() if t["type"] == "page")
            async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                page = Page(ws)
                await page.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                                deviceScaleFactor=1, mobile=False)
                await page.call("Page.navigate", url=url)
                return await asyncio.wait_for(script(page), timeout)

    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        proc = subprocess.Popen(["chromium", *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + 60
            while not (port_file.exists() and port_file.read_text().strip()):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("chromium did not start its DevTools server")
                time.sleep(0.1)
            return asyncio.run(main(int(port_file.read_text().split()[0])))
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
