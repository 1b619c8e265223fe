"""The way to the service decided before any connection (proxies.py), its secrets masked, the flags resolved:
pure functions, and `batchgen run` refusing a bad --proxy or --ca-bundle before anything is sent."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from batchgen import proxies
from batchgen.args import exit_meaning
from batchgen.client import open_session
from batchgen.config import RunSettings, Secret, Timeouts, redact
from batchgen.errors import UsageError
from batchgen.proxies import ProxySettings, proxy_for, resolve_proxy

from .helpers import BATCHGEN, KEY, cli, env, manifest_of

P = "http://u:pw-Secret-1@proxy.corp:3128"


@pytest.mark.parametrize(
    ("url", "no_proxy", "expected"),
    [
        ("https://api.example.com/x", "", P),
        ("https://api.example.com/x", "*", None),
        ("https://api.example.com/x", "example.com", None),  # a domain and every name under it
        ("https://api.example.com/x", ".example.com", None),
        ("https://api.example.com/x", "*.example.com", None),
        ("https://example.com/x", ".example.com", None),
        ("https://notexample.com/x", "example.com", P),  # a suffix on a label boundary only
        ("https://api.example.com/x", "api.example.com:8443", P),  # a port limits the entry to that port
        ("https://api.example.com:8443/x", "api.example.com:8443", None),
        ("https://10.1.2.3/x", "10.0.0.0/8", None),  # CIDR
        ("https://10.1.2.3/x", "10.1.2.3", None),
        ("https://11.1.2.3/x", "10.0.0.0/8", P),
        ("https://[fd00::1]/x", "fd00::/8", None),
        ("https://[::1]:9/x", "[::1]:9", None),
        ("https://CDN.Example.COM./x", "cdn.example.com", None),  # case and a trailing dot do not matter
        ("https://cdn.example.org/x", "example.com, other.org  cdn.example.org", None),  # commas or spaces
        ("http://127.0.0.1:8080/x", "", None),  # plain http to loopback: never through a proxy
        ("http://localhost/x", "", None),
        ("http://[::1]/x", "", None),
        ("https://127.0.0.1/x", "", P),  # https to loopback may go through one (the key is encrypted)
        ("ftp://example.com/x", "", None),
        ("http://cdn.example.com/x", "", "http://h:1"),
    ],
)
def test_which_proxy_for_a_url(url, no_proxy, expected):
    settings = resolve_proxy(None, {"HTTPS_PROXY": P, "HTTP_PROXY": "http://h:1", "NO_PROXY": no_proxy})
    assert proxy_for(url, settings) == expected


def test_proxy_flag_over_batchgen_proxy_over_the_usual_variables():
    environ = {"HTTPS_PROXY": "http://a:1", "https_proxy": "http://b:2", "HTTP_PROXY": "http://c:3", "NO_PROXY": "x"}
    assert resolve_proxy(None, environ).https == "http://b:2"  # lower case first, as curl and urllib
    assert resolve_proxy(None, environ).http == "http://c:3"
    assert resolve_proxy(None, {**environ, "BATCHGEN_PROXY": "http://d:4"}).https == "http://d:4"
    flagged = resolve_proxy("e:5", {**environ, "BATCHGEN_PROXY": "http://d:4"})
    assert (flagged.https, flagged.http, flagged.no_proxy, flagged.source) == (
        "http://e:5",
        "http://e:5",
        ("x",),
        "--proxy",
    )
    assert resolve_proxy(None, {"HTTP_PROXY": "http://c:3", "REQUEST_METHOD": "GET"}).http is None  # httpoxy
    assert resolve_proxy(None, {}) == ProxySettings()
    assert resolve_proxy("", environ).https is None and resolve_proxy("", environ).http is None  # --proxy "": none


@pytest.mark.parametrize(
    "bad", ["socks5://u:pw-Secret-1@h:1", "http://u:pw-Secret-1@h:99999", "http://u:pw-Secret-1@h:1/path"]
)
def test_a_bad_proxy_url_is_a_usage_error_that_never_echoes_its_password(bad):
    with pytest.raises(UsageError) as info:
        resolve_proxy(bad, {})
    assert "pw-Secret-1" not in str(info.value)


def test_proxy_credentials_never_show_and_are_masked_in_every_form():
    settings = RunSettings(
        manifest=Path("m.yaml"), out=Path("o"), api_base="https://x", api_key=Secret(KEY),
        proxy=resolve_proxy("http://nightly:p%40ss-Word-7@proxy:3128", {}),
    )  # fmt: skip
    assert "ss-Word" not in repr(settings) and "nightly" not in repr(settings)
    assert "http://proxy:3128" in repr(settings)
    text = "url http://nightly:p%40ss-Word-7@proxy:3128 plain p@ss-Word-7 encoded p%40ss-Word-7 key " + KEY
    masked = redact(text, settings.secrets())
    assert "ss-Word-7" not in masked and KEY not in masked


def test_the_summary_of_a_run_that_paid_never_says_nothing_submitted():
    assert "nothing submitted" in exit_meaning(2)
    assert "nothing submitted" not in exit_meaning(2, paid=3) and "3 createTask calls paid" in exit_meaning(2, paid=3)


def test_a_ca_bundle_must_be_a_bounded_regular_pem_file(tmp_path):
    with pytest.raises(UsageError, match="not a regular file"):
        proxies.tls_context(Path("/dev/zero"))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="not a regular file"):  # never blocks on a FIFO
        proxies.tls_context(fifo)
    (tmp_path / "junk.pem").write_text("hello")
    with pytest.raises(UsageError, match="no PEM certificate"):
        proxies.tls_context(tmp_path / "junk.pem")
    (tmp_path / "bad.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with pytest.raises(UsageError, match="not a PEM certificate bundle"):
        proxies.tls_context(tmp_path / "bad.pem")


async def test_run_refuses_a_bad_proxy_or_ca_bundle_before_anything_is_sent(tmp_path, sim_factory):
    path = manifest_of(tmp_path / "m.yaml", ["a fox"])
    async with sim_factory() as sim:
        base = [*BATCHGEN, "run", str(path), "--out", str(tmp_path / "o"), "--api-base", sim.api_url]
        code, _, stderr = await cli([*base, "--ca-bundle", str(tmp_path / "missing.pem")], env=env())
        assert code == 2 and "--ca-bundle" in stderr, stderr
        code, _, stderr = await cli(base, env=env(BATCHGEN_PROXY="socks5://u:pw-Secret-1@h:1"))
        assert code == 2 and "BATCHGEN_PROXY" in stderr and "pw-Secret-1" not in stderr, stderr
        assert sim.stats.create_calls == 0


async def test_a_create_never_goes_out_on_a_connection_idle_for_over_a_second():
    """aiohttp reuses a pooled connection idle up to its keepalive_timeout (15 s by default); a server may close it
    at any moment after ~1 s, and a createTask written into a closing connection is in doubt. Measured: idle 0.8 s
    -> reused; idle 0.95 s, 1.2 s, 2 s -> a new connection."""
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with open_session(Timeouts()) as session:
            for _ in range(2):
                async with session.get(f"http://127.0.0.1:{port}/") as response:
                    await response.read()
            assert connections == 1  # back to back: the connection is kept
            await asyncio.sleep(1.1)  # idleness itself is what is tested here, not a synchronisation
            async with session.get(f"http://127.0.0.1:{port}/") as response:
                await response.read()
            assert connections == 2
    finally:
        server.close()
        await server.wait_closed()


def test_proxy_credentials_are_masked_from_the_first_line(tmp_path):
    """argparse echoes what it does not know (`status` has no --proxy): the password is masked even there,
    and in a proxy variable's value too."""
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "batchgen", "status", str(tmp_path), "--proxy", "http://u:LongPass-123@h:1"],
        env=env(HTTPS_PROXY="http://u:EnvPass-456@h:1"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and "unrecognized arguments" in done.stderr, done.stderr
    assert "LongPass-123" not in done.stderr + done.stdout


def test_a_password_with_quotes_is_masked_in_json_log_lines_too():
    import io

    from batchgen.progress import Reporter

    password = 'p"ss\\word-42'
    stream = io.StringIO()
    settings = resolve_proxy(f"http://u:{password}@proxy:3128", {})
    reporter = Reporter(stream=stream, fmt="json", secret=settings.secrets())
    reporter.warning(f"something said {password} and http://u:{password}@proxy:3128")
    assert "ss" not in stream.getvalue().replace("something said", ""), stream.getvalue()


def test_a_short_proxy_password_is_masked_where_it_stands_alone():
    # A proxy password under 6 characters was never masked on its own (only the user:password pair was): a
    # proxy's "407 bad password 9xQ2" went to the log as it came. Alone it is masked now, never inside a word.
    way = resolve_proxy("http://nightly:9xQ2@proxy:3128", {})
    masked = redact("407 bad password 9xQ2, pair nightly:9xQ2, url-encoded 9xQ2; id item9xQ2b kept", way.secrets())
    assert masked == "407 bad password ****, pair ****, url-encoded ****; id item9xQ2b kept"
    assert redact("p%40w and p@w", resolve_proxy("http://u:p%40w@proxy:3128", {}).secrets()) == "**** and ****"
    assert redact("a b ab", resolve_proxy("http://u:ab@proxy:3128", {}).secrets()) == "a b ab"  # too short to mask
