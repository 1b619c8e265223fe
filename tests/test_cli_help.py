"""The command line as documentation: --help for every command and option, errors in plain words, no prefix
matching, shell completion generated from the parser, and the small wording of messages."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from batchgen import args
from batchgen.config import PollSchedule
from batchgen.progress import clip

from .helpers import BATCHGEN, KEY, manifest_of, run_args
from .helpers import cli as run_cli


def parsers() -> dict[str, argparse.ArgumentParser]:
    root = args.build_parser()
    (commands,) = [a for a in root._actions if isinstance(a, argparse._SubParsersAction)]
    return {"batchgen": root, **commands.choices}


def test_every_command_and_option_is_described_and_no_parser_matches_prefixes():
    found = parsers()
    assert set(found) == {
        "batchgen",
        "validate",
        "run",
        "status",
        "report",
        "models",
        "review",
        "sim",
        "jobs",
        "completion",
        "doctor",
    }
    for name, parser in found.items():
        assert parser.allow_abbrev is False, name
        assert parser.description, name
        for action in parser._actions:
            if not isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)
    (commands,) = [a for a in found["batchgen"]._actions if isinstance(a, argparse._SubParsersAction)]
    assert all(choice.help for choice in commands._choices_actions)


def test_run_help_lists_every_exit_code():
    proc = subprocess.run([*BATCHGEN, "run", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    epilog = proc.stdout[proc.stdout.index("exit codes") :]
    codes = re.findall(r"^  (\S+)\s", epilog, re.M)
    assert codes == ["70", "3", "2", "4", "128+N", "5", "1", "0"]
    assert "--log-format {text,json}" in proc.stdout and "-q, --quiet" in proc.stdout and "-v, --verbose" in proc.stdout


def test_poll_interval_help_says_what_the_schedule_does():
    action = next(a for a in parsers()["run"]._actions if a.dest == "poll_interval")
    text = action.help % {"default": action.default}
    first = action.default
    schedule = PollSchedule(first)
    # "every 2.5 s, every 7.5 s after 30 s, every 20 s after 120 s": each figure checked against the code.
    (start, middle, after_middle, last, after_last) = map(
        float, re.search(r"every (\S+) s, every (\S+) s after (\S+) s, every (\S+) s after (\S+) s", text).groups()
    )
    assert schedule.interval(0) == start
    assert schedule.interval(after_middle - 0.01) == start and schedule.interval(after_middle) == middle
    assert schedule.interval(after_last - 0.01) == middle and schedule.interval(after_last) == last


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (
            ["run", "m.yaml", "--out", "o", "--concurrency", "many"],
            "--concurrency: expected an integer >= 1, got 'many'",
        ),
        (["run", "m.yaml", "--out", "o", "--limit", "-1"], "--limit: expected an integer >= 0, got '-1'"),
        (["run", "m.yaml", "--out", "o", "--poll-rate", "fast"], "--poll-rate: expected a number > 0, got 'fast'"),
        (["run", "m.yaml", "--out", "o", "--lim", "3"], "unrecognized arguments: --lim 3"),  # no prefix matching
        (["sim", "--port", "http"], "--port: expected a port number 0-65535, got 'http'"),
        (["sim", "--fail-rate", "2"], "--fail-rate: expected a share between 0 and 1, got '2'"),
    ],
)
def test_flag_errors_speak_plainly(args, said):
    proc = subprocess.run([*BATCHGEN, *args], capture_output=True, text=True)
    assert proc.returncode == 2
    assert said in proc.stderr and "Traceback" not in proc.stderr
    assert not re.search(r"invalid \w+ value|_\w+_int|positive_", proc.stderr), proc.stderr
    assert proc.stderr.startswith("usage: batchgen ")


def test_bash_completion_is_generated_from_the_parser_and_completes(tmp_path):
    proc = subprocess.run([*BATCHGEN, "completion", "bash"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    script = tmp_path / "batchgen.bash"
    script.write_text(proc.stdout)

    def complete(line: str) -> list[str]:
        words = line.split(" ")
        shell = (
            f"source {script}; COMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}; "
            f'COMP_LINE="{line}"; COMP_POINT=${{#COMP_LINE}}; _shtab_batchgen batchgen "{words[-1]}" "{words[-2]}"; '
            'printf "%s\\n" "${COMPREPLY[@]}"'
        )
        done = subprocess.run(["bash", "-c", shell], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert complete("batchgen ") == [
        "validate",
        "run",
        "status",
        "report",
        "models",
        "review",
        "sim",
        "jobs",
        "doctor",
        "completion",
    ]
    assert complete("batchgen run --met") == ["--metadata", "--metrics-file"]  # SPEC §3 has both
    assert set(complete("batchgen run --metadata ")) == {"none", "sidecar", "png"}
    assert set(complete("batchgen run --log-format ")) == {"text", "json"}


def test_zsh_completion_is_generated(tmp_path):
    proc = subprocess.run([*BATCHGEN, "completion", "zsh"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("#compdef batchgen")
    assert "--metrics-file" in proc.stdout and "--max-runtime" in proc.stdout
    if shutil.which("zsh"):
        script = tmp_path / "_batchgen"
        script.write_text(proc.stdout)
        assert subprocess.run(["zsh", "-n", str(script)]).returncode == 0


# ---------------------------------------------------------------- wording


def test_clip_cuts_on_a_word_boundary():
    prompt = "A realistic aerial photo of a futuristic green city beside the sea"
    assert clip(prompt, 40) == "A realistic aerial photo of a\u2026"
    assert clip(prompt, 100) == prompt
    assert clip("one\n  two", 20) == "one two"
    assert len(clip("x" * 80, 10)) == 10


async def test_a_rejected_item_is_not_sent_back_with_retry_failed_and_wording_counts_right(sim_factory, tmp_path):
    path = manifest_of(
        tmp_path / "m.yaml",
        ["a picture [sim:fail-transient:1]", "a rejected picture [sim:reject]"],
    )
    out = tmp_path / "out"
    async with sim_factory(api_key=KEY, latency=0.05) as sim:
        code, _, stderr = await run_cli(run_args(path, out, sim))
    assert code == 1, stderr
    rejected = next(line for line in stderr.splitlines() if "item 'item-01' failed" in line)
    assert "--retry-failed" not in rejected and "fix the item in the manifest" in rejected
    assert (
        stderr.splitlines()[-1]
        .split("batchgen: ", 1)[1]
        .startswith("1 succeeded, 1 failed, 0 submitted, 0 pending; 2 paid creates, 1 retry, ")
    )
    proc = subprocess.run([*BATCHGEN, "status", str(out)], capture_output=True, text=True)
    assert "; 1 image file\n" in proc.stdout and "(0 attempts)" not in proc.stdout
    assert "rejected when submitted: no task was created; fix the item in the manifest" in proc.stdout


async def test_dry_run_cuts_prompts_on_a_word_boundary(tmp_path):
    long = "A very long prompt about a lighthouse standing on a rocky shore while the sea breaks white around it"
    path = manifest_of(tmp_path / "m.yaml", [long])
    code, stdout, _ = await run_cli([*BATCHGEN, "run", str(path), "--out", str(tmp_path / "o"), "--dry-run"])
    assert code == 0
    line = next(line for line in stdout.splitlines() if "submit item-00:" in line)
    shown = line.split("submit item-00: ", 1)[1]
    assert shown.endswith("\u2026") and long.startswith(shown[:-1]) and long[len(shown) - 1] == " "
    assert "1 item ->" in stdout


def test_validate_counts_in_the_singular(tmp_path):
    path = manifest_of(tmp_path / "m.yaml", ["a"])
    proc = subprocess.run([*BATCHGEN, "validate", str(path)], capture_output=True, text=True)
    assert proc.stdout == f"{path}: 1 item, valid\n"
    assert Path(path).exists()


async def test_short_quiet_and_verbose_flags(sim_factory, tmp_path):
    path = manifest_of(tmp_path / "m.yaml", ["a"])
    async with sim_factory(api_key=KEY, latency=0.05) as sim:
        code, _, quiet = await run_cli(run_args(path, tmp_path / "q", sim, "-q"))
        assert code == 0 and quiet == ""  # a normal night under -q says nothing at all
        code, _, verbose = await run_cli(run_args(path, tmp_path / "v", sim, "-v"))
        assert code == 0 and "item 'item-00': submitted as task_" in verbose
