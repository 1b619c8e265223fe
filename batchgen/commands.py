"""The commands behind `batchgen COMMAND`: each takes the parsed flags and the invocation's Session, does its
one job, and returns its exit code or raises a BatchgenError for the ladder in cli.py to map.

`run` is command_run.py's; the session and `say` (the one way a command prints its result, so that a closed or
full stdout is seen by the ladder) are session.py's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import errno
import json
import os
import sys
from collections import Counter
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

from . import (
    config,
    endactions,
    finish,
    manifest,
    memory,
    models,
    names,
    plan,
    prices,
    proxies,
    report,
    sheet,
)
from .args import build_parser, parse_rate
from .callbacks import parse_listen
from .command_run import StoppedEarly, cmd_run, settings_from, way_from
from .errors import ExitCode, ManifestError, StorageError, UsageError
from .escapes import visible, visible_json
from .files import STATE_DIR, read_bounded, write_atomically
from .progress import plural
from .session import Session, StdoutError, flush_stdout, say

__all__ = ["COMMANDS", "Session", "StdoutError", "StoppedEarly", "flush_stdout", "say", "settings_from"]


def cmd_validate(args: argparse.Namespace, session: Session) -> int:
    price = prices.from_settings(args.price, os.environ)
    notes: list[str] = []
    cards = models.registry(args.models_dir, os.environ, notes)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if args.model is not None and cards.get(args.model) is None:
        raise UsageError(f"--model: {cards.unknown_model(args.model)}")
    problems = 0
    for path in args.manifests:
        try:
            loaded = manifest.load_counted(path, model=args.model, cards=cards)
            stems = None if args.name == names.DEFAULT_TEMPLATE else names.render_stems(loaded.items, args.name)
            names.check_lengths(loaded.items, stems, Path(args.out) if args.out else None)
        except ManifestError as exc:
            problems += len(exc.problems)
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            continue
        for line in models.sunset_warnings(cards, {item.model for item in loaded.items}, datetime.date.today()):
            print(f"warning: {path}: {line}", file=sys.stderr)
        count = len(loaded.items)
        single = price.default if price is not None and not price.by_model else None
        say(f"{visible(path)}: {plan.item_counts(loaded.listed, count)}, valid{plan.upper_bound(count, single)}")
        if price is not None and price.by_model:
            parts, total = prices.costs(Counter(item.model for item in loaded.items), price)
            in_all = f"; {total} in all" if total is not None else ""
            say(f"  at most, if every item is paid for once: {'; '.join(parts)}{in_all}")
    if problems:
        print(f"{plural(problems, 'problem')} found; nothing would be submitted", file=sys.stderr)
        return ExitCode.USAGE
    return ExitCode.OK


def cmd_status(args: argparse.Namespace, session: Session) -> int:
    doc = report.status(Path(args.directory))
    directory = Path(args.directory)  # what runs learned (memory.py) about the services DIR's runs used
    services, unknown = _services_shown(os.environ, directory)
    doc["services"] = memory.describe(os.environ, directory, services)
    doc["services_used_unknown"] = unknown  # the last run predates DIR's note of its services: all are shown
    say(visible_json(json.dumps(doc, indent=1, ensure_ascii=False)) if args.json else report.status_text(doc))
    if not args.json and doc["services"]:
        if unknown:
            say("  (DIR's last run predates its note of the services it used: every remembered service is shown)")
        say(memory.describe_text(doc["services"]))
    return ExitCode.OK


def _services_shown(env: Mapping[str, str], out: Path) -> tuple[list[str], bool]:
    """The services `status` shows for DIR `out`: those its runs used, and False. A DIR whose last run predates
    the note of them (a .batchgen without services.json) gives every service remembered where a run with DIR
    would look, and True: which of them DIR used is not known until its next run."""
    if not (out / STATE_DIR).is_dir() or os.path.lexists(out / STATE_DIR / memory.USED):
        return memory.used(out), False
    found: dict[str, None] = {}
    for folder in dict.fromkeys([memory.directory(env, out, create=False), out / STATE_DIR]):
        with contextlib.suppress(OSError):
            for path in sorted(folder.glob(f"{memory.PREFIX}*.json"))[: memory.MAX_MODELS]:
                doc = memory.read_document(path)
                if isinstance(doc, dict) and memory.kept_name(service := doc.get("service")):
                    found[str(service)] = None
    return list(found)[: memory.MAX_MODELS], True


def cmd_report(args: argparse.Namespace, session: Session) -> int:
    directory = Path(args.directory)
    try:
        page = sheet.write_report(directory)
    except OSError as exc:  # DIR/index.html is a folder, DIR is read-only, the disk is full: one clear line
        reason = exc.strerror or str(exc)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
            raise StorageError(f"{directory}/index.html: cannot write it: {reason}") from exc
        raise UsageError(f"{directory}/index.html: cannot write it: {reason}") from exc
    say(str(page))
    return ExitCode.OK


def cmd_review(args: argparse.Namespace, session: Session) -> int:
    from . import review  # its web server (aiohttp.web): a run never loads it

    directory = Path(args.directory)
    try:
        host, port = parse_listen(args.listen)
    except ValueError as exc:
        raise UsageError(f"--listen: {exc}") from None
    warning = review.check_listen(host, args.allow_remote)
    if warning:
        session.out.warning(warning)
    report.read_ledger(directory)  # no ledger: say so now, not on the first page load
    return asyncio.run(review.serve(review.Review(directory), host, port, say))


JOB_FILES = {"install": "jobs", "samples": "sample_manifests"}
EXECUTABLE = {"nightly.sh"}


def cmd_jobs(args: argparse.Namespace, session: Session) -> int:
    """Write out the files shipped in the package (batchgen/data/), so a pip user has them too.

    Each file is written atomically and never through a symlink: a link at a file's name counts as a file
    that differs (kept without --force); --force replaces the link itself, never the file it points to."""
    source = resources.files("batchgen") / "data" / JOB_FILES[args.what]
    target = Path(args.directory)
    if target.is_symlink() and not target.exists():
        raise UsageError(f"{target} is a symbolic link to nothing; name a directory")
    if target.exists() and not target.is_dir():
        raise UsageError(f"{target} is a file, not a directory; name a directory")
    shipped = sorted((entry.name, entry.read_bytes()) for entry in source.iterdir() if entry.is_file())
    differing = [name for name, data in shipped if _differs(target / name, data)]
    if differing and not args.force:
        raise UsageError(
            f"{target}: {', '.join(differing)} already there and different; nothing was written "
            "(--force overwrites them)"
        )
    try:
        target.mkdir(parents=True, exist_ok=True)
        for name, data in shipped:
            path = target / name
            # 755 for the script, 644 for the rest: the env example holds no secret
            write_atomically(path, data, target, mode=0o755 if name in EXECUTABLE else 0o644)
            say(str(path))
    except OSError as exc:
        raise UsageError(f"{target}: cannot write there: {exc.strerror or exc}") from exc
    return ExitCode.OK


def _differs(path: Path, data: bytes) -> bool:
    """Whether writing `data` at `path` would change what is there; a symlink always differs (never read)."""
    if path.is_symlink():
        return True
    if not path.exists():
        return False
    if not path.is_file():
        return True
    found = read_bounded(path, len(data), str(path))  # never a FIFO swapped in meanwhile, nor a 10 GB file
    return isinstance(found, str) or found != data


def cmd_completion(args: argparse.Namespace, session: Session) -> int:
    try:
        import shtab
    except ImportError:
        raise UsageError(
            "shell completion needs shtab: pip install 'batchgen[completion]' (or pip install shtab)"
        ) from None
    say(shtab.complete(build_parser(), shell=args.shell))
    return ExitCode.OK


def cmd_sim(args: argparse.Namespace, session: Session) -> int:
    from .sim import SimConfig, serve_until_stopped

    # The flags are named after SimConfig's fields; three need parsing.
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(SimConfig) if hasattr(args, f.name)}
    values["rate"] = None if args.rate.strip().lower() in ("none", "off", "0") else parse_rate(args.rate, "--rate")
    values["poll_limit"] = parse_rate(args.poll_limit, "--poll-limit") if args.poll_limit else None
    values["url_ttl"] = args.url_ttl or None
    values["unsupported_models"] = tuple(args.unsupported_models or ())
    sim_config = SimConfig(**values)
    notes: list[str] = []
    cards = models.registry(args.models_dir, os.environ, notes)  # it serves the user's cards too
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    try:
        asyncio.run(serve_until_stopped(sim_config, cards))
    except OSError as exc:
        raise UsageError(f"cannot listen on {sim_config.host}:{sim_config.port}: {exc.strerror or exc}") from exc
    return ExitCode.OK


def cmd_models(args: argparse.Namespace, session: Session) -> int:
    notes: list[str] = []
    cards = models.registry(args.models_dir, os.environ, notes)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if args.name is None:
        lines = models.listing(cards)
    elif (card := cards.get(args.name)) is not None:
        lines = models.field_table(card)
    else:
        raise UsageError(cards.unknown_model(args.name))
    say("\n".join(lines))
    return ExitCode.OK


def cmd_doctor(args: argparse.Namespace, session: Session) -> int:
    """Check the way to the service, one line per step; exit 0, 3 refused, 1 unreachable, 2 usage."""
    from . import doctor  # only this command's: a run does not load it

    api_base = args.api_base or os.environ.get("BATCHGEN_API_BASE", "")
    if not api_base:
        raise UsageError("no service address: pass --api-base URL or set BATCHGEN_API_BASE")
    api_base = config.check_api_base(api_base)
    warnings: list[str] = []
    key = config.read_key(os.environ, args.api_key_file, warnings)
    proxy, ca_bundle = way_from(args, os.environ)
    session.out.configure(
        quiet=False, verbose=False, progress=False, secret=(*((key.value,) if key else ()), *proxy.secrets())
    )
    for warning in warnings:
        session.out.warning(warning)
    out = Path(args.out) if args.out else None
    with asyncio.Runner() as loop:
        checks = loop.run(doctor.diagnose(api_base, key, proxy, proxies.tls_context(ca_bundle), out, os.environ))
        if args.notify:  # the night's end, tried the way it will go: BATCHGEN_NOTIFY's URLs and BATCHGEN_PING
            actions = endactions.resolve(None, None, None, None, os.environ)
            tried = loop.run(finish.test_notification(actions, session.out, proxy=proxy, ca_bundle=ca_bundle))
            fix = "check the URL in BATCHGEN_NOTIFY / BATCHGEN_PING and that its service is up (the lines above)"
            checks += [doctor.Check(line.split(":")[0], ok, line.split(": ", 1)[1], fix, 1) for ok, line in tried]
    for check in checks:
        say(session.out.redact(check.line()))
    return doctor.exit_code(checks)


COMMANDS = {
    "validate": cmd_validate,
    "models": cmd_models,
    "run": cmd_run,
    "status": cmd_status,
    "report": cmd_report,
    "review": cmd_review,
    "sim": cmd_sim,
    "jobs": cmd_jobs,
    "completion": cmd_completion,
    "doctor": cmd_doctor,
}
