"""The API key leaks nowhere (issue 19: one file for the theme): not into a file of DIR, a log line, the ledger,
a report, a name, a message about what the service sent, nor the environment of a child; masked at one boundary
(config.redact) in every form it can take (URL-encoded, slugged, case-folded); a key file others can read draws
a warning.

Real runs against the simulator on loopback (which can echo the key back, or put it into result URLs), the real
CLI in a subprocess."""

from __future__ import annotations

import io
import json
import os
import stat
from urllib.parse import quote, quote_plus

import pytest

from batchgen import ids, names, report, runner, sheet
from batchgen.client import Client, open_session
from batchgen.config import Secret, Timeouts, holds_secret, read_key, redact
from batchgen.errors import ServerError
from batchgen.progress import Reporter

from .helpers import KEY, answering, cli, env, make_settings, manifest_of, results, run, run_args

MANIFEST = "- id: fox\n  prompt: a fox\n  seed: 7\n- id: owl\n  prompt: an owl\n  seed: 12\n"
WEIRD_KEY = "sk-live/with+plus=and space&amp"


# ---------------------------------------------------------------- 1. masked at one boundary, in every form


def test_secret_never_shows_its_value():
    secret = Secret("sk-very-secret")
    assert "sk-very" not in repr(secret) and "sk-very" not in str(secret) and "sk-very" not in f"{[secret]}"


def test_redact_masks_the_key_and_its_url_encoded_forms():
    for form in (WEIRD_KEY, quote(WEIRD_KEY, safe=""), quote_plus(WEIRD_KEY), quote(WEIRD_KEY, safe="").lower()):
        assert redact(f"x {form} y", WEIRD_KEY) == "x **** y"


def test_masks_match_the_keys_derived_forms():
    key = "sk-Live-4f9a-77c1"
    for form in (key, "sk_Live_4f9a_77c1", "SK-LIVE-4F9A-77C1", "sk_live_4f9a_77c1"):
        assert redact(f"x {form} y", key) == "x **** y", form
    assert redact("x sk%2BLive%2F4f9a y", "sk+Live/4f9a") == "x **** y"
    mixed = "sk_live.4f9a-77c1"  # `_` kept, `.` made `-`, lowercased: the {prompt} slug's form
    assert redact(f"a-{names.slug(mixed).lower()}-b", mixed) == "a-****-b"
    long_key = "sk-live-4f9a77c1e2d0b5aa9c3e1f7d6b2a8c4e"
    token = ids.token(long_key)  # what a matrix value puts in an id: cut to 24 characters and a hash
    assert long_key.replace("-", "_") not in token and redact(token, long_key) == token  # no mask can find it
    assert holds_secret(f"zoo-{token}", long_key) and holds_secret(names.slug(long_key), long_key)
    assert not holds_secret("a fox in the snow", key)


# ---------------------------------------------------------------- 2. a run: no file, log line, name or message


@pytest.mark.parametrize("echo_token", [False, True], ids=["careful service", "service echoes the key"])
async def test_the_key_leaks_nowhere(sim_factory, tmp_path, echo_token):
    # the next test puts the key into result URLs (never fetched); here images are fetched.
    out = tmp_path / "out"
    stream = io.StringIO()
    path = manifest_of(tmp_path / "m.yaml", ["a", "b [sim:fail-policy]", "c [sim:reject]"])
    async with sim_factory(api_key=KEY, latency=0.05, echo_token=echo_token) as sim:
        settings = make_settings(path, out, sim, verbose=True)
        await runner.run(settings, Reporter(stream=stream, verbose=True))
        assert sim.stats.file_auth_headers == 0 and sim.stats.file_requests >= 1
    sheet.write_report(out)
    for file in out.rglob("*"):
        if file.is_file():
            assert KEY.encode() not in file.read_bytes(), file
    assert KEY not in stream.getvalue() and "Secret('****')" in repr(settings)
    if echo_token:
        assert "****" in results(out)["items"]["item-02"]["error"]["message"]


async def test_nothing_the_service_sends_reaches_disk_or_a_log_with_the_key(sim_factory, tmp_path):
    out = tmp_path / "out"
    stream = io.StringIO()
    path = manifest_of(tmp_path / "m.yaml", ["a [sim:fail-policy]", "b [sim:reject]", "c"])
    async with sim_factory(latency=0.05, echo_token=True, key_in_result_url=True) as sim:
        outcome = await run(make_settings(path, out, sim, api_key=Secret(WEIRD_KEY)), stream)
        assert sim.stats.file_requests == 0  # a URL carrying the key is never fetched
    sheet.write_report(out)
    forms = {WEIRD_KEY, quote(WEIRD_KEY, safe=""), quote_plus(WEIRD_KEY), quote(WEIRD_KEY)}
    for file in out.rglob("*"):
        if file.is_file():
            data = file.read_bytes()
            assert not any(form.encode() in data for form in forms), file
    assert not any(form in stream.getvalue() for form in forms)
    items = results(out)["items"]
    assert outcome.exit_code == 1
    assert "****" in items["item-00"]["error"]["message"] and "****" in items["item-01"]["error"]["message"]
    error = items["item-02"]["error"]
    assert error["kind"] == "bad_result" and "carries the API key" in error["message"]
    assert "auth=****" in error["message"]
    assert "****" in report.status_text(report.status(out))


async def test_a_task_id_carrying_the_key_is_never_written():
    answer = json.dumps({"code": 200, "data": {"taskId": f"task_{KEY}"}})
    async with answering(200, answer, "application/json") as base, open_session(Timeouts()) as session:
        with pytest.raises(ServerError, match=r"task_\*\*\*\*") as caught:
            await Client(session, base, Secret(KEY), Timeouts()).create_task({"model": "m", "input": {}})
    assert KEY not in str(caught.value)


async def test_the_key_file_as_a_wildcard_never_reaches_a_name_the_ledger_or_a_log(sim_factory, tmp_path):
    key = "sk-live-4f9a-77c1-e2d0-b5aa"
    (tmp_path / "api-key").write_text(key + "\n", "utf-8")
    os.chmod(tmp_path / "api-key", 0o600)
    path = tmp_path / "m.yaml"  # the README's layout: the key file beside the manifest
    path.write_text("- id: z\n  prompt: 'a fox, {style}'\n  matrix: {style: {file: api-key}}\n", "utf-8")
    out = tmp_path / "out"
    async with sim_factory(api_key=key) as sim:
        args = run_args(path, out, sim, "--api-key-file", str(tmp_path / "api-key"), "--name", "{style}", "-v")
        code, stdout, stderr = await cli(args, env={k: v for k, v in env().items() if k != "BATCHGEN_API_KEY"})
        assert sim.stats.create_calls == 0
    assert code == 2 and "m.yaml:1: id: holds the API key" in stderr, stderr
    for form in (key, key.replace("-", "_"), "sk_live_4f9a_77c1_e2d0", "sk-live-4f9a-77c1-e2d0"):
        assert form not in stdout + stderr
    assert not out.exists() or not any(out.iterdir())


# ---------------------------------------------------------------- 3. children and the key file


SPY = """\
import json, os
if os.environ.get("NETRC") == os.devnull and "BATCHGEN_SPY" in os.environ:  # the notifier child (child_env)
    with open(os.path.join(os.environ["BATCHGEN_SPY"], f"env-{os.getpid()}.json"), "w") as f:
        json.dump(dict(os.environ), f)
"""


async def test_the_notifier_never_gets_the_key_under_another_name(tmp_path, write, sim_factory):
    """The hook's environment drops every variable holding the key, by value; the notifier's (Apprise and its
    plugins, in a child) dropped only BATCHGEN_API_KEY by name: a copy of the key under another name (an env
    file exporting it twice, a wrapper's own variable) reached it."""
    spy = tmp_path / "spy"
    spy.mkdir()
    (spy / "sitecustomize.py").write_text(SPY)
    path = write("m.yaml", MANIFEST)
    async with sim_factory() as sim:
        code, _, err = await cli(
            [*run_args(path, tmp_path / "out", sim), "--notify-on", "always"],
            env=env(
                PYTHONPATH=str(spy),
                BATCHGEN_SPY=str(spy),
                LIANGXIN_TOKEN=KEY,
                BATCHGEN_NOTIFY="json://127.0.0.1:9/nowhere-abcdef",
            ),
        )
    assert code == 0, err
    seen = [json.loads(p.read_text()) for p in spy.glob("env-*.json")]
    assert len(seen) == 1, err  # the notifier ran, and was seen
    assert not [name for name, value in seen[0].items() if KEY in value]


def test_a_key_file_readable_by_others_draws_a_warning(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("sk-secret\n")
    key_file.chmod(0o644)
    warnings: list[str] = []
    assert read_key({}, str(key_file), warnings) == Secret("sk-secret")
    assert warnings and "chmod 600" in warnings[0] and "sk-secret" not in warnings[0]
    key_file.chmod(stat.S_IRUSR | stat.S_IWUSR)
    warnings.clear()
    read_key({}, str(key_file), warnings)
    assert warnings == []
