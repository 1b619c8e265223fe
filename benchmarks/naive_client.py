"""The client a user would write in an afternoon: the baseline every batchgen figure is compared with.

asyncio.Semaphore for concurrency, a fixed 1 s poll, a fixed 15 s pause on 429, whole-body downloads into
memory, no ledger, no resume. Usage: python benchmarks/naive_client.py MANIFEST OUT_DIR (env BATCHGEN_API_BASE,
BATCHGEN_API_KEY). Prints one JSON line: creates, polls, 429s.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from batchgen import manifest


async def main(manifest_path: str, out: str, concurrency: int = 8) -> None:
    base = os.environ["BATCHGEN_API_BASE"]
    headers = {"Authorization": f"Bearer {os.environ['BATCHGEN_API_KEY']}"}
    items = manifest.load(manifest_path)
    Path(out).mkdir(parents=True, exist_ok=True)
    gate = asyncio.Semaphore(concurrency)
    stats = {"creates": 0, "polls": 0, "rate_limited": 0, "failed": 0}

    async def one(session: aiohttp.ClientSession, item: manifest.Item) -> None:
        async with gate:
            while True:
                async with session.post(f"{base}/api/v1/jobs/createTask", json=item.request, headers=headers) as r:
                    body = await r.json(content_type=None) if r.status != 429 else None
                if r.status == 429 or (body and str(body.get("code")) == "429"):
                    stats["rate_limited"] += 1
                    await asyncio.sleep(15)
                    continue
                task_id = body["data"]["taskId"]
                stats["creates"] += 1
                break
            while True:
                await asyncio.sleep(1)
                async with session.get(
                    f"{base}/api/v1/jobs/recordInfo", params={"taskId": task_id}, headers=headers
                ) as r:
                    stats["polls"] += 1
                    if r.status == 429:
                        stats["rate_limited"] += 1
                        continue
                    data = (await r.json(content_type=None)).get("data") or {}
                if data.get("state") in ("success", "fail"):
                    break
            if data["state"] == "fail":
                stats["failed"] += 1
                return
            url = json.loads(data["resultJson"])["resultUrls"][0]
            async with session.get(url) as r:
                content = await r.read()
            Path(out, f"{item.id}.{'jpg' if url.split('?')[0].endswith('.jpg') else 'png'}").write_bytes(content)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(one(session, item) for item in items))
    print(json.dumps(stats))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 8))
