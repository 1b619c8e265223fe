"""A model that is gone (SPEC §2 "Models"): its items are not sent, other models go on, the next run probes it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from batchgen import gone

from .helpers import cli, env_without_config, run_args

NIGHT = """\
- id: im1
  prompt: a fox
- id: im2
  prompt: an owl
- id: im3
  prompt: a hare
- id: nb1
  model: nano-banana-pro
  prompt: a fox
- id: nb2
  model: nano-banana-pro
  prompt: an owl
- id: fx1
  model: flux-2-pro
  prompt: a fox
"""


def states(out: Path) -> dict[str, tuple[str, str | None]]:
    items = json.loads((out / "results.json").read_text())["items"]
    return {k: (v["state"], (v.get("error") or {}).get("kind")) for k, v in items.items()}


@pytest.mark.parametrize("answer", ["400", "price", "503"])
async def test_a_mixed_night_with_one_model_gone(tmp_path, write, sim_factory, answer):
    path = write("night.yaml", NIGHT)
    out = tmp_path / "out"
    async with sim_factory(unsupported_models=("imagen4-ultra",), unsupported_answer=answer) as sim:
        code, _, err = await cli(run_args(path, out, sim, "--concurrency", "1"))
        assert code == 1, err
        assert sim.stats.models_refused == 1  # the first answer; the model's other items were not sent
        assert sim.stats.creates == 3  # the other models went on
        assert sim.stats.create_calls == 4  # and nothing was retried
    assert states(out) == {
        "im1": ("failed", "model_unavailable"),
        "im2": ("failed", "model_unavailable"),
        "im3": ("failed", "model_unavailable"),
        "nb1": ("succeeded", None),
        "nb2": ("succeeded", None),
        "fx1": ("succeeded", None),
    }
    lines = [line for line in err.splitlines() if "not offered" in line]
    assert len(lines) == 1, err
    assert "model 'imagen4-ultra' is not offered by the service" in lines[0]
    assert "its card names 'nano-banana-pro' as its successor" in lines[0]
    assert "in doubt" not in err and "Traceback" not in err
    items = json.loads((out / "results.json").read_text())["items"]
    assert all(not v.get("doubt_open") and not v.get("paid") for k, v in items.items() if k.startswith("im"))
    code, status, _ = await cli([sys.executable, "-m", "batchgen", "status", str(out)])
    assert "failed  im2: model_unavailable: model 'imagen4-ultra' is not offered by the service" in status
    assert "(not sent: the service does not offer its model; the next run tries one item of it first)" in status


async def test_the_next_run_probes_a_gone_model_with_one_item_without_retry_failed(tmp_path, write, sim_factory):
    path = write("night.yaml", NIGHT)
    out = tmp_path / "out"
    async with sim_factory(unsupported_models=("imagen4-ultra",)) as sim:
        code, _, err = await cli(run_args(path, out, sim))
        assert code == 1, err
        refused = sim.stats.models_refused
        code, _, err = await cli(run_args(path, out, sim))  # still gone: one probe, the rest fail unsent
        assert code == 1, err
        assert sim.stats.models_refused == refused + 1 and sim.stats.creates == 3
        assert "3 to submit (0 new, 0 changed, 3 retried)" in err
    assert states(out)["im2"] == ("failed", "model_unavailable")
    async with sim_factory() as sim:  # back: the probe is created, and the model's other items follow
        code, _, err = await cli(run_args(path, out, sim))
        assert code == 0, err
        assert sim.stats.creates == 3 and sim.stats.models_refused == 0
    assert set(states(out).values()) == {("succeeded", None)}


async def test_other_failures_are_not_retried_without_the_flag(tmp_path, write, sim_factory):
    path = write("night.yaml", "- id: a\n  prompt: 'x [sim:fail-policy]'\n")
    out = tmp_path / "out"
    async with sim_factory() as sim:
        code, _, err = await cli(run_args(path, out, sim))
        assert code == 1
        code, _, err = await cli(run_args(path, out, sim))
        assert code == 1 and sim.stats.creates == 1, err


@pytest.mark.parametrize(
    ("status", "text", "gone_"),
    [
        (400, '{"code": 400, "msg": "unsupported model: imagen4-ultra", "data": null}', True),
        (200, '{"code": 400, "msg": "unsupported model: imagen4-ultra", "data": null}', True),
        (400, '{"code": 400, "msg": "unsupported model", "data": null}', False),  # does not name it
        (400, '{"code": 400, "msg": "unsupported model: flux-2-pro", "data": null}', False),  # another one
        (400, '{"code": 400, "msg": "unsupported model: imagen4-ultra-fast", "data": null}', False),  # its cousin
        (400, '{"code": 400, "msg": "unsupported model: imagen4-ultra.", "data": null}', True),
        (400, '{"code": 400, "msg": "input.seed: imagen4-ultra needs an integer", "data": null}', False),
        (400, '{"error": {"message": "model imagen4-ultra price not configured", "code": "model_price_error"}}', True),
        (500, '{"error": {"message": "模型 imagen4-ultra 倍率或价格未配置", "code": "model_price_error"}}', True),
        (503, '{"error": {"message": "当前分组 default 下对于模型 imagen4-ultra 无可用渠道", "code": ""}}', True),
        (503, '{"error": {"message": "no channel available for model imagen4-ultra", "type": "x"}}', True),
        (503, '{"error": {"message": "no channel available", "type": "x"}}', False),  # transient: retried
        (503, "<html>503 Service Unavailable</html>", False),
        (502, '{"error": {"message": "no channel available for model imagen4-ultra"}}', False),
        (429, '{"code": 429, "msg": "unsupported model imagen4-ultra"}', False),
    ],
)
def test_which_answers_say_a_model_is_gone(status, text, gone_):
    assert (gone.classify(status, text, "imagen4-ultra") is not None) is gone_


async def test_a_card_past_its_sunset_warns_in_validate_and_run(tmp_path, write, sim_factory):

    cards = tmp_path / "cards"
    cards.mkdir()
    card = json.loads((Path(gone.__file__).parent / "cards" / "imagen4-ultra.json").read_text())
    card["sunset"] = "2026-08-17"
    (cards / "imagen4-ultra.json").write_text(json.dumps(card))
    path = write("night.yaml", "- prompt: a fox\n")
    command = [sys.executable, "-m", "batchgen", "validate", str(path), "--models-dir", str(cards)]
    code, _, err = await cli(command, env=env_without_config())
    warning = (
        "model 'imagen4-ultra' is past its sunset date (2026-08-17, in its card); its successor is 'nano-banana-pro'"
    )
    assert code == 0 and warning in err
    async with sim_factory() as sim:
        code, _, err = await cli(
            run_args(path, tmp_path / "out", sim, "--models-dir", str(cards)), env=env_without_config()
        )
    assert code == 0 and warning in err
    code, _, err = await cli(command[:-2], env=env_without_config())
    assert "sunset" not in err


def test_the_services_text_reaches_the_log_as_one_printable_line():
    hostile = json.dumps({"code": 400, "msg": "unsupported model: imagen4-ultra\x1b[31m\nFAKE LINE\u202e\r"})
    message = gone.classify(400, hostile, "imagen4-ultra")
    assert message == "unsupported model: imagen4-ultra [31m FAKE LINE"
    assert message.isprintable()
