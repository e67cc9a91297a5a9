"""Every command, subcommand, flag and config key that README.md and ARCHITECTURE.md name exists, so that the next
rename cannot leave the docs behind.

Read from the docs: ``resnet-repro CMD [SUB]`` invocations (also ``python -m resnet_repro`` and torchrun's
``-m resnet_repro``) in inline code and in code blocks, with the ``--flags`` that follow them in the same code span
or command line (checked against that subcommand's argparse parser); every other ``--flag`` (checked against all
of our parsers, or ALLOWED, the flags of other tools the docs show); and ``section.key`` mentions (checked against
the config dataclasses). The second test feeds the checker a made-up page naming what does not exist.
"""
from __future__ import annotations

import argparse
import dataclasses
import re

from conftest import REPO
from resnet_repro.cli import build_parser
from resnet_repro.config import Config

DOCS = ("README.md", "ARCHITECTURE.md")

# Flags of tools that are not `resnet-repro`, each with the tool the docs show it on.
ALLOWED = {
    "--standalone": "torchrun", "--nproc-per-node": "torchrun", "--nnodes": "torchrun", "--rdzv-backend": "torchrun",
    "--rdzv-endpoint": "torchrun", "--rdzv-id": "torchrun", "--max-restarts": "torchrun",
    "--nodes": "sbatch", "--shm-size": "docker run",
    "--dry-run": "tools/gpu.sh", "--delays": "tools/stop_latency.py", "--photo": "tools/make_golden_fixtures.py",
    "--train": "tools/make_jpeg_shards.py", "--val": "tools/make_jpeg_shards.py",
    "--classes": "tools/make_jpeg_shards.py", "--index-url": "pip",
}
# `section.name` words that are file names, not config keys (train.py, model.safetensors, ...).
FILE_SUFFIXES = {"py", "yaml", "sh", "json", "jsonl", "md", "pt", "lock", "safetensors", "png", "txt"}
INVOCATION = re.compile(r"(?:resnet-repro|(?:python3? )?-m\s+resnet_repro)\s+([a-z][a-z0-9-]*)(?:\s+([a-z][a-z0-9-]*))?")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
CONFIG_KEY = re.compile(r"(?<![\w/.-])(data|model|optim|schedule|train)\.([a-z_][a-z0-9_]*)")


def parsers() -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every (sub)command's parser by its path: () the program, ("bench", "loader") a sub-subcommand."""
    found, todo = {}, [((), build_parser())]
    while todo:
        path, parser = todo.pop()
        found[path] = parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += [((*path, name), sub) for name, sub in action.choices.items()]
    return found


def flags_of(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def config_keys() -> dict[str, set[str]]:
    return {f.name: {g.name for g in dataclasses.fields(f.default_factory)} for f in dataclasses.fields(Config)}


def code_spans(text: str) -> list[str]:
    """Inline code spans and code-block command lines (backslash continuations joined)."""
    spans, prose = [], []
    for k, part in enumerate(re.split(r"^```.*$", text, flags=re.M)):
        if k % 2:  # inside a fenced block
            spans += part.replace("\\\n", " ").splitlines()
        else:
            prose.append(part)
    spans += re.findall(r"`([^`]+)`", "\n".join(prose), flags=re.S)
    return spans


def doc_problems(text: str, where: str) -> list[str]:
    by_path = parsers()
    every_flag = set().union(*(flags_of(p) for p in by_path.values()))
    keys = config_keys()
    problems, in_invocations = [], set()
    for span in code_spans(text):
        for m in INVOCATION.finditer(span):
            cmd, sub = m.group(1), m.group(2)
            if (cmd,) not in by_path:
                problems.append(f"{where}: `resnet-repro {cmd}`: no such command")
                continue
            path, parser = (cmd,), by_path[(cmd,)]
            if any(p[:1] == (cmd,) and len(p) == 2 for p in by_path):  # a command with subcommands (bench)
                if sub is None:
                    continue  # the group itself named (`resnet-repro bench …`)
                if (cmd, sub) not in by_path:
                    problems.append(f"{where}: `resnet-repro {cmd} {sub}`: no such subcommand")
                    continue
                path, parser = (cmd, sub), by_path[(cmd, sub)]
            else:
                choices = [a.choices for a in parser._actions if not a.option_strings and a.choices]
                if choices and sub and sub not in choices[0]:
                    problems.append(f"{where}: `resnet-repro {cmd} {sub}`: {sub!r} is not one of {list(choices[0])}")
            rest = span[m.end():]
            nxt = INVOCATION.search(rest)
            for flag in FLAG.findall(rest[:nxt.start()] if nxt else rest):
                in_invocations.add(flag)
                if flag not in flags_of(parser) and flag not in ALLOWED:
                    problems.append(f"{where}: `resnet-repro {' '.join(path)}` has no flag {flag}")
    for flag in sorted(set(FLAG.findall(text)) - in_invocations):
        if flag not in every_flag and flag not in ALLOWED:
            problems.append(f"{where}: {flag}: no resnet-repro command has this flag (add it to ALLOWED if it "
                            "belongs to another tool)")
    for section, key in sorted(set(CONFIG_KEY.findall(text))):
        if key not in FILE_SUFFIXES and key not in keys[section]:
            problems.append(f"{where}: config key {section}.{key} does not exist")
    return problems


def test_every_name_the_docs_use_exists():
    problems = [p for doc in DOCS for p in doc_problems((REPO / doc).read_text(), doc)]
    assert not problems, "\n".join(problems)
    assert len(code_spans((REPO / "README.md").read_text())) > 100  # the parser found the docs' code at all


def test_a_page_naming_what_does_not_exist_fails_naming_it():
    page = ("Run `resnet-repro train --config X --no-such-flag` then `resnet-repro evaluate --split val`;\n"
            "```\nresnet-repro bench loader --data D \\\n    --workers 2 --not-a-bench-flag\n```\n"
            "`resnet-repro nosuch`, `resnet-repro prepare mnist --out D`, `resnet-repro bench nope`,\n"
            "set `data.no_such_key` or `train.epochs`, see train.py and model.safetensors; `--also-missing`;\n"
            "`torchrun --standalone --nproc-per-node 2 -m resnet_repro train --bogus`")
    problems = "\n".join(doc_problems(page, "page.md"))
    for named in ("`resnet-repro train` has no flag --no-such-flag", "`resnet-repro bench loader` has no flag "
                  "--not-a-bench-flag", "`resnet-repro nosuch`: no such command", "'mnist' is not one of",
                  "`resnet-repro bench nope`: no such subcommand", "config key data.no_such_key does not exist",
                  "--also-missing: no resnet-repro command", "`resnet-repro train` has no flag --bogus"):
        assert named in problems, (named, problems)
    for fine in ("--split", "--workers", "train.epochs", "train.py", "model.safetensors", "--standalone"):
        assert fine not in problems, fine
    assert len(problems.splitlines()) == 8, problems
