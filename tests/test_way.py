"""The real way to the service (SPEC §1a): a forward proxy with Basic auth (tinyproxy), nginx with a private CA in
front of the simulator (short keep-alive, its own HTML 413/502/504 pages), certificates that do not verify, and
`batchgen doctor`. Real processes on loopback; batchgen runs as a user runs it (a subprocess) unless a test
needs the run's own retry pacing."""

from __future__ import annotations

import asyncio
import contextlib
import io
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from batchgen import ledger, manifest, runner
from batchgen.config import RetryPolicy
from batchgen.progress import Reporter
from batchgen.sim import SimConfig, Simulator

from . import netkit
from .helpers import FAST, KEY, cli, env, make_settings, manifest_of, run_args, serve, until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> netkit.Pki:
    return netkit.make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[netkit.Tinyproxy]:
    server = netkit.Tinyproxy(tmp_path / "tinyproxy")
    server.start()
    yield server
    server.stop()


class Way:
    """The simulator behind nginx (TLS with the test CA, or a bad certificate)."""

    def __init__(self, sim: Simulator, nginx: netkit.Nginx) -> None:
        self.sim = sim
        self.nginx = nginx


@pytest.fixture
def way_factory(tmp_path: Path, pki: netkit.Pki):
    started: list[netkit.Nginx] = []

    def make(cert: str = "good", files_cert: str | None = None, **sim: object):
        nginx = netkit.Nginx(tmp_path / f"nginx{len(started)}")
        started.append(nginx)

        class _Way:
            async def __aenter__(self) -> Way:
                config = SimConfig(**{**FAST, "files_public_url": nginx.files_url, **sim})  # type: ignore[arg-type]
                self.sim = Simulator(config)
                await self.sim.__aenter__()
                files = pki.certs[files_cert] if files_cert else None
                nginx.start(self.sim.api_url, self.sim.files_url, pki.certs[cert], files_cert=files)
                return Way(self.sim, nginx)

            async def __aexit__(self, *exc: object) -> None:
                nginx.stop()
                await self.sim.__aexit__(None, None, None)

        return _Way()

    yield make
    for nginx in started:
        nginx.stop()


def files_holding(folders: list[Path], secret: str) -> list[Path]:
    """Every file under these folders whose bytes hold the secret, as written or URL-encoded."""
    forms = {secret.encode(), secret.replace("-", "%2D").encode()}
    found = []
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file() and any(form in path.read_bytes() for form in forms):
                found.append(path)
    return found


# ---------------------------------------------------------------- through the proxy


async def test_a_night_through_a_proxy_with_basic_auth_delivers_every_image(
    tmp_path, pki, proxy, way_factory, state_home
):
    home = tmp_path / "home"
    home.mkdir()
    # A .netrc with a matching entry: aiohttp would read it with trust_env, and then fail every call.
    (home / ".netrc").write_text(f"machine {netkit.API_HOST} login someone password netrc-pass-123\n")
    (home / ".netrc").chmod(0o600)
    out = tmp_path / "out"
    async with way_factory() as way:
        path = manifest_of(tmp_path / "m.yaml", ["a fox", "an owl", "a hare"])
        code, stdout, stderr = await cli(
            run_args(path, out, way.nginx.api_url, "--ca-bundle", str(pki.ca), "-v", "--report"),
            env=env(HTTPS_PROXY=proxy.url(), HOME=str(home)),
        )
        assert code == 0, stderr
        assert way.sim.stats.creates == 3
    assert sorted(p.name for p in out.glob("*.png")) == ["item-00.png", "item-01.png", "item-02.png"]
    connects = set(proxy.connects())
    assert f"{netkit.API_HOST}:{way.nginx.api_port}" in connects  # the API through the proxy
    assert f"{netkit.FILES_HOST}:{way.nginx.files_port}" in connects  # and the result host too
    assert netkit.PROXY_PASSWORD not in stdout + stderr
    assert files_holding([out, state_home], netkit.PROXY_PASSWORD) == []
    assert "netrc-pass-123" not in stdout + stderr


async def test_no_proxy_sends_its_hosts_direct_host_by_host(tmp_path, pki, proxy, way_factory):
    out = tmp_path / "out"
    async with way_factory() as way:
        path = manifest_of(tmp_path / "m.yaml", ["a fox", "an owl"])
        code, _, stderr = await cli(
            run_args(path, out, way.nginx.api_url, "--ca-bundle", str(pki.ca), "--proxy", proxy.url()),
            env=env(NO_PROXY=f"{netkit.FILES_HOST}"),  # NO_PROXY applies under --proxy too
        )
        assert code == 0, stderr
    connects = set(proxy.connects())
    assert connects == {f"{netkit.API_HOST}:{way.nginx.api_port}"}  # the result host went direct

    out2 = tmp_path / "out2"
    async with way_factory() as way:
        code, _, stderr = await cli(
            run_args(path, out2, way.nginx.api_url, "--ca-bundle", str(pki.ca)),
            env=env(https_proxy=proxy.url(), no_proxy=f"{netkit.API_HOST},.example.com,{netkit.FILES_HOST}"),
        )
        assert code == 0, stderr
    assert set(proxy.connects()) == connects  # nothing more went through the proxy


async def test_plain_http_to_loopback_never_goes_through_a_proxy(tmp_path, proxy, sim_factory):
    """The key would travel to the proxy in clear: http:// to a loopback address is always direct."""
    async with sim_factory() as sim:
        path = manifest_of(tmp_path / "m.yaml", ["a fox"])
        code, _, stderr = await cli(
            run_args(path, tmp_path / "out", sim.api_url, "--proxy", proxy.url()),
            env=env(HTTP_PROXY=proxy.url(), HTTPS_PROXY=proxy.url()),
        )
        assert code == 0, stderr
    log = (proxy.folder / "tinyproxy.log").read_text(errors="replace")
    assert "Request (file descriptor" not in log  # not one request reached the proxy


# ---------------------------------------------------------------- a way that refuses us stops at once


@pytest.mark.parametrize(
    ("cert", "says"),
    [
        ("untrusted", "not trusted: use --ca-bundle"),
        ("expired", "expired"),
        ("wrong_host", "another host name"),
    ],
)
async def test_a_certificate_that_does_not_verify_ends_the_run_at_once(tmp_path, pki, way_factory, cert, says):
    out = tmp_path / "out"
    async with way_factory(cert) as way:
        path = manifest_of(tmp_path / "m.yaml", ["a fox", "an owl", "a hare"])
        code, _, stderr = await cli(run_args(path, out, way.nginx.api_url), env=env(SSL_CERT_FILE=str(pki.ca)))
        assert way.sim.stats.create_calls == 0  # nothing reached the service, nothing paid
    assert code == 3, stderr
    lines = [line for line in stderr.splitlines() if "certificate of" in line]
    assert len(lines) == 1 and f"{netkit.API_HOST}:{way.nginx.api_port}" in lines[0] and says in lines[0], stderr
    assert "run the same command again" not in stderr and "Traceback" not in stderr
    records = manifest.load(path)
    assert records and (out / "results.json").exists()  # state saved: every item still pending
    assert '"pending": 3' in (out / "results.json").read_text()


async def test_a_result_host_whose_certificate_fails_stops_new_creates_and_keeps_paid_tasks(tmp_path, pki, way_factory):
    out = tmp_path / "out"
    async with way_factory(files_cert="expired") as way:
        path = manifest_of(tmp_path / "m.yaml", [f"picture {n}" for n in range(6)])
        code, _, stderr = await cli(
            run_args(path, out, way.nginx.api_url, "--ca-bundle", str(pki.ca), "--concurrency", "2"), env=env()
        )
        paid = way.sim.stats.creates
    assert code == 3, stderr
    lines = [line for line in stderr.splitlines() if "certificate of" in line]
    assert len(lines) == 1 and f"{netkit.FILES_HOST}:{way.nginx.files_port}" in lines[0] and "expired" in lines[0]
    items = ledger.load(out).items
    assert paid < 6  # no new creates once the result host refused us
    states = [r["state"] for r in items.values()]
    assert "failed" not in states and states.count("submitted") >= 1  # paid tasks kept, resumable by task id
    assert sum(r.get("paid", 0) for r in items.values()) == paid


@pytest.mark.parametrize("refusal", ["wrong password", "port not allowed"])
async def test_a_proxy_that_refuses_ends_the_run_at_once(tmp_path, pki, way_factory, refusal):
    server = netkit.Tinyproxy(tmp_path / "tp")
    server.start(connect_ports=(443,) if refusal == "port not allowed" else ())
    try:
        url = server.url("wrong-Pass-77" if refusal == "wrong password" else netkit.PROXY_PASSWORD)
        async with way_factory() as way:
            path = manifest_of(tmp_path / "m.yaml", ["a fox", "an owl"])
            code, stdout, stderr = await cli(
                run_args(path, tmp_path / "out", way.nginx.api_url, "--ca-bundle", str(pki.ca)),
                env=env(HTTPS_PROXY=url),
            )
            assert way.sim.stats.create_calls == 0
    finally:
        server.stop()
    assert code == 3, stderr
    lines = [line for line in stderr.splitlines() if "the proxy http://127.0.0.1:" in line]
    assert len(lines) == 1 and ("407" in lines[0] or "credentials" in lines[0] or "403" in lines[0]), stderr
    assert "wrong-Pass-77" not in stdout + stderr and netkit.PROXY_PASSWORD not in stdout + stderr


async def test_a_service_never_reached_says_so_in_one_line(tmp_path):
    port = netkit.free_port()  # nothing listens there
    path = manifest_of(tmp_path / "m.yaml", ["a fox"])
    code, _, stderr = await cli(
        [*run_args(path, tmp_path / "out", f"http://127.0.0.1:{port}"), "--max-runtime", "1"], env=env()
    )
    assert code == 5, stderr
    assert sum("was never reached this run" in line for line in stderr.splitlines()) == 1, stderr


# ---------------------------------------------------------------- a night behind nginx


async def test_a_night_behind_nginx_survives_keepalive_closes_an_outage_and_a_413(tmp_path, pki, way_factory):
    """Keep-alive closes (1 s, 3 requests), a 502-then-504 outage from nginx's own pages, and one prompt too long
    for the gateway (HTML 413): every other image arrives in the same run, exit 1."""
    prompts = [f"picture {n}" for n in range(8)] + ["x" * 6000]  # the last one is over nginx's 4 KB body limit
    path = manifest_of(tmp_path / "m.yaml", prompts)
    out = tmp_path / "out"
    stream = io.StringIO()
    async with way_factory(latency=0.3) as way:
        settings = make_settings(
            path,
            out,
            way.sim,
            api_base=way.nginx.api_url,
            ca_bundle=pki.ca,
            create_rate=(3, 1.0),  # creates keep coming through the outage (status queries keep failing meanwhile)
            retry=RetryPolicy(calls=12, wait_initial=0.2, wait_max=1.0, wait_jitter=0.1),
        )

        async def outage() -> None:  # once the night is under way: 502s, then 504s, then back
            await until(lambda: way.sim.stats.creates >= 3)
            try:
                for status in (502, 504):  # each phase lasts until it has refused creates and status queries alike
                    way.nginx.switch(str(status))
                    await until(lambda: way.nginx.served(status, "createTask") >= 1 and way.nginx.served(status) >= 4)  # noqa: B023
            finally:
                way.nginx.switch(None)  # whatever happened, the way comes back and the night can end

        switcher = asyncio.create_task(outage())
        outcome = await runner.run(settings, Reporter(stream=stream, progress=False))
        await switcher
    log = stream.getvalue()
    assert outcome.exit_code == 1, log
    loaded = manifest.load(path)
    records = {item.id: item for item in loaded}
    items = ledger.load(out).items
    failed = [i for i, r in items.items() if r["state"] == "failed"]
    assert failed == ["item-08"], log
    assert items["item-08"]["error"]["kind"] == "rejected" and items["item-08"]["error"]["code"] == "413"
    assert all(items[f"item-{n:02d}"]["state"] == "succeeded" for n in range(8))
    assert sum(r.get("in_doubt", 0) for r in items.values()) >= 2  # the outage's creates: in doubt, sent again
    for item_id, item in records.items():
        paid = way.sim.stats.creates_by_request[manifest.derive_id(item.canonical)]
        assert paid <= 1 + items[item_id].get("in_doubt", 0), (item_id, paid, items[item_id])
    assert "api-base" not in log


# ---------------------------------------------------------------- doctor


def doctor_args(api_base: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "batchgen", "doctor", "--api-base", api_base, *extra]


async def test_doctor_passes_on_a_good_way_and_names_each_broken_part(tmp_path, pki, proxy, way_factory):
    out = tmp_path / "dir"
    async with way_factory() as way:
        code, stdout, stderr = await cli(
            doctor_args(way.nginx.api_url, "--ca-bundle", str(pki.ca), "--out", str(out)),
            env=env(HTTPS_PROXY=proxy.url()),
        )
        assert code == 0, stdout + stderr
        for step in ("proxy:", "name resolution:", "tcp:", "proxy tunnel:", "tls:", "key:", "clock:", "DIR:"):
            assert any(line.startswith("ok   " + step) for line in stdout.splitlines()), (step, stdout)
        assert "issued by O=batchgen tests, CN=batchgen test ca CA" in stdout, stdout
        assert netkit.PROXY_PASSWORD not in stdout + stderr
        assert way.sim.stats.create_calls == 0  # doctor pays nothing

        # A CA this machine does not trust: the TLS line says who issued the certificate, and what to do.
        code, stdout, _ = await cli(doctor_args(way.nginx.api_url), env=env())
        assert code == 3
        tls = next(line for line in stdout.splitlines() if line.startswith("FAIL tls:"))
        assert "--ca-bundle" in tls and "batchgen test ca CA" in tls

        # The proxy refuses the password.
        code, stdout, _ = await cli(
            doctor_args(way.nginx.api_url, "--ca-bundle", str(pki.ca)), env=env(HTTPS_PROXY=proxy.url("bad-pw-1234"))
        )
        assert code == 3 and any(line.startswith("FAIL proxy tunnel:") for line in stdout.splitlines()), stdout
        assert "bad-pw-1234" not in stdout

    # The service refuses the key.
    async with way_factory(api_key="the-right-key-42") as way:
        code, stdout, _ = await cli(doctor_args(way.nginx.api_url, "--ca-bundle", str(pki.ca)), env=env())
        assert code == 3 and any(line.startswith("FAIL key:") for line in stdout.splitlines()), stdout
        assert KEY not in stdout

    # Nothing listens there.
    code, stdout, _ = await cli(doctor_args(f"https://127.0.0.1:{netkit.free_port()}"), env=env())
    assert code == 1 and any(line.startswith("FAIL tcp:") for line in stdout.splitlines()), stdout


def test_doctor_without_an_api_base_is_a_usage_error(tmp_path):
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "batchgen", "doctor"],
        env={k: v for k, v in env().items() if k != "BATCHGEN_API_BASE"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and "--api-base" in done.stderr


# ---------------------------------------------------------------- refusals: the run's, or one item's


@contextlib.asynccontextmanager
async def waf(upstream: str, refuse: str) -> AsyncIterator[str]:
    """A web application firewall in front of the API: an HTML 403 page for a createTask whose body holds
    `refuse` ("" refuses every one); everything else is passed on."""
    async with aiohttp.ClientSession() as session:

        async def handle(request: web.Request) -> web.Response:
            body = await request.read()
            if request.path.endswith("/createTask") and refuse.encode() in body:
                page = "<html><head><title>403 Forbidden</title></head><body>Request blocked</body></html>"
                return web.Response(status=403, text=page, content_type="text/html")
            headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
            async with session.request(
                request.method, upstream + request.path_qs, data=body or None, headers=headers
            ) as answer:
                data = await answer.read()
                return web.Response(status=answer.status, body=data, content_type=answer.content_type)

        async with serve(handle) as base:
            yield base


async def test_a_firewall_refusing_one_prompt_fails_that_item_only(tmp_path, sim_factory):
    path = manifest_of(tmp_path / "m.yaml", [f"picture {n}" for n in range(5)] + ["a forbidden picture"])
    out = tmp_path / "out"
    stream = io.StringIO()
    async with sim_factory() as sim, waf(sim.api_url, "forbidden") as front:
        outcome = await runner.run(make_settings(path, out, sim, api_base=front), Reporter(stream=stream))
        assert sim.stats.creates == 5
    items = ledger.load(out).items
    assert outcome.exit_code == 1, stream.getvalue()
    assert items["item-05"]["state"] == "failed" and items["item-05"]["error"]["kind"] == "refused"
    assert all(items[f"item-{n:02d}"]["state"] == "succeeded" for n in range(5))


async def test_a_firewall_refusing_the_first_prompt_of_a_sequential_run_fails_that_item_only(tmp_path, sim_factory):
    """One create at a time, the refused prompt first: nothing has succeeded yet to tell a WAF from a refused key,
    so the item is held until the next create decides."""
    path = manifest_of(tmp_path / "m.yaml", ["a forbidden picture", "picture 1", "picture 2"])
    out = tmp_path / "out"
    stream = io.StringIO()
    async with sim_factory() as sim, waf(sim.api_url, "forbidden") as front:
        settings = make_settings(path, out, sim, api_base=front, concurrency=1)
        outcome = await runner.run(settings, Reporter(stream=stream))
        assert sim.stats.creates == 2
    items = ledger.load(out).items
    assert outcome.exit_code == 1, stream.getvalue()
    assert items["item-00"]["state"] == "failed" and items["item-00"]["error"]["kind"] == "refused"
    assert items["item-01"]["state"] == items["item-02"]["state"] == "succeeded"


@pytest.mark.parametrize("concurrency", [1, 100])
async def test_a_firewall_refusing_every_create_ends_the_run_with_exit_3(tmp_path, sim_factory, concurrency):
    path = manifest_of(tmp_path / "m.yaml", ["a fox", "an owl", "a hare"])
    out = tmp_path / "out"
    stream = io.StringIO()
    async with sim_factory() as sim, waf(sim.api_url, "") as front:
        settings = make_settings(path, out, sim, api_base=front, concurrency=concurrency)
        outcome = await runner.run(settings, Reporter(stream=stream))
        assert sim.stats.create_calls == 0
    assert outcome.exit_code == 3, stream.getvalue()
    assert {r["state"] for r in ledger.load(out).items.values()} == {"pending"}  # nothing failed for good
    assert "api-base" not in stream.getvalue()


async def test_a_usage_error_after_a_create_in_doubt_never_says_nothing_submitted(tmp_path):
    """The first createTask's answer is lost (in doubt: it may be paid), then the gateway answers 404 pages: the
    run ends with exit 2, and its summary does not claim that nothing was submitted."""
    calls = 0

    async def handle(request: web.Request) -> web.Response:
        nonlocal calls
        await request.read()
        calls += 1
        if calls == 1:
            assert request.transport is not None
            request.transport.close()
            raise asyncio.CancelledError  # the client sees the connection dropped after its request left
        return web.Response(status=404, text="<html><body>Not Found</body></html>", content_type="text/html")

    async with serve(handle) as base:
        path = manifest_of(tmp_path / "m.yaml", ["a fox"])
        hook = tmp_path / "hook.py"  # the --on-finish hook reads the same meaning as the summary line
        hook.write_text("import json, sys\nopen(sys.argv[1], 'w').write(json.load(sys.stdin)['exit_meaning'])\n")
        told = tmp_path / "told.txt"
        on_finish = ["--on-finish", f"{sys.executable} {hook} {told}"]
        code, _, stderr = await cli(run_args(path, tmp_path / "out", base, *on_finish), env=env())
    assert code == 2, stderr
    summary = stderr.strip().splitlines()[-1]
    assert "exit 2" in summary and "nothing submitted" not in summary and "in doubt" in summary, summary
    assert "nothing submitted" not in told.read_text() and "in doubt" in told.read_text()
