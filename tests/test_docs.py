"""The documentation is executable: every command and Python example in the code blocks of
README.md, launch/README.md and docs/*.md runs, as written, on small real things.

A block of commands (```bash, or a bare ``` block of commands) runs line by line (backslash
continuations joined, `# comments` dropped, `[optional]` parts left out) in a scratch directory
that looks like a checkout (configs/ and launch/ linked) where the documented placeholders exist:
`ckpt/instructblip-flan-t5-xl` and `path/to/instructblip-flan-t5-xl` are a tiny converted and a
tiny Hugging Face directory, `photo.jpg` a photograph, and the absolute paths are mapped
(`PATHS`: `/data/ib` is the miniature of the 26 datasets with its tokenizers). The test only ever
ADDS to a command: `--config.train.num_steps=2` to a training job (`TRAIN_OVERRIDES`). A ```python
block runs as a script there.

A block that cannot run here says so in the markdown, in an HTML comment just before it:
`<!-- docs-test: skip: REASON -->`, or `<!-- docs-test: dry-run -->` for commands checked in
their dry-run form (`DRY_RUN`: the TPU launcher with --dry_run, `make -n`; `sbatch`, `pip
install` and gcloud lines are left to the dry-run line beside them). A command failing names
its file and line.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

import pytest

from data_pipelines import miniature
from ib_jax.export import export
from tests.test_finetune import write_tiny_init

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md", "launch/README.md", *sorted(glob.glob("docs/*.md", root_dir=REPO))]
# Programs a documented command may start with; a bare ``` block is commands when every line
# starts with one (else it is a listing, as the README's "What is where").
PROGRAMS = ("python", "make", "sbatch", "pip", "DRY_RUN=", "bash", "gcloud")
# Lines a dry-run block leaves to the dry-run line beside them (they need SLURM, the network or
# Google Cloud): checked to be in a block marked dry-run, never run.
ELSEWHERE = ("sbatch ", "pip install", "gcloud ")
DIRECTIVE = re.compile(r"<!--\s*docs-test:\s*(skip|dry-run)\b[:\s]*(.*?)\s*-->", re.S)
TRAIN_OVERRIDES = ["--config.train.num_steps=2", "--config.checkpoint.every_steps=2"]
TIMEOUT = 600


@dataclasses.dataclass
class Block:
    """A fenced code block: its file, the line of its first content line, language, lines,
    and the docs-test directive before it ("skip", "dry-run" or None, and its reason)."""

    path: str
    line: int
    language: str
    lines: list[str]
    directive: str | None
    reason: str


def blocks(path: str) -> list[Block]:
    """Every fenced block of a markdown file."""
    with open(os.path.join(REPO, path), encoding="utf-8") as f:
        text = f.read().splitlines()
    found, index = [], 0
    while index < len(text):
        fence = re.match(r"^```(\w*)\s*$", text[index])
        if not fence:
            index += 1
            continue
        before = "\n".join(text[max(0, index - 3) : index])
        directive = DIRECTIVE.findall(before)
        end = next(i for i in range(index + 1, len(text)) if text[i].startswith("```"))
        kind, reason = directive[-1] if directive else (None, "")
        found.append(Block(path, index + 2, fence[1], text[index + 1 : end], kind, reason))
        index = end + 1
    return found


def is_commands(block: Block) -> bool:
    """A shell block, or a bare block whose every line is a command (or a continuation)."""
    if block.language in ("bash", "sh", "shell", "console"):
        return True
    if block.language:
        return False
    lines = [line for line in block.lines if line.strip()]
    return bool(lines) and all(
        line.lstrip().startswith(PROGRAMS) or line.startswith(" ") for line in lines
    )


def commands(block: Block) -> list[tuple[int, list[str]]]:
    """(line number, words) per command: continuations joined, comments and [optional] parts
    dropped (an optional --dry_run is kept: it is the form a dry-run block checks)."""
    out, pending, start = [], "", 0
    for offset, line in enumerate(block.lines):
        if not pending:
            start = block.line + offset
        pending += line.rstrip().removesuffix("\\") + " "
        if line.rstrip().endswith("\\"):
            continue
        words = without_optional(shlex.split(pending, comments=True))
        pending = ""
        if words:
            out.append((start, words))
    return out


def without_optional(words: list[str]) -> list[str]:
    """The words outside `[...]` groups (a group may span words), `[--dry_run]` kept."""
    kept, depth = [], 0
    for word in words:
        if depth == 0 and word == "[--dry_run]":
            kept.append("--dry_run")
        elif depth == 0 and not word.startswith("["):
            kept.append(word)
        else:
            depth += word.count("[") - word.count("]")
    return kept


# ---------------------------------------------------------------------------------------------
# The small real things the placeholders name
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A directory that looks like a checkout with the documented inputs in place; returns
    (its path, the absolute-path map)."""
    root = tmp_path_factory.mktemp("docs")
    for name in ("configs", "launch"):  # copies: a command must never write into the checkout
        shutil.copytree(os.path.join(REPO, name), root / name)
    for name in os.listdir(REPO):  # Makefile, pyproject.toml, requirements and constraints
        if name.endswith((".txt", ".toml")) or name == "Makefile":
            shutil.copy(os.path.join(REPO, name), root / name)
    mini = str(root / "data_ib")
    miniature.write_miniature(mini)
    init = write_tiny_init(str(root / "ckpt" / "instructblip-flan-t5-xl"))
    hf = root / "path" / "to" / "instructblip-flan-t5-xl"
    # A Hugging Face directory made by our exporter (no torch needed): the demo SentencePiece
    # model has 279 pieces, so row 287 of the tiny 288-row vocabulary is free for <image>.
    export(init, str(hf), tokenizer_dir=init, image_token=287)
    photo = sorted(glob.glob(os.path.join(mini, "coco", "images", "val2014", "*.jpg")))[0]
    shutil.copy(photo, root / "photo.jpg")
    paths = {
        "/data/ib": mini,
        "/data/tfds": str(root / "tfds"),
        "/tmp/mini": str(root / "mini_out"),
    }
    return str(root), paths


def runnable(block: Block, line: int, words: list[str], paths: dict, root: str) -> list[str] | None:
    """The argv to run for a documented command (env assignments left in front), or None for
    a line a dry-run block leaves to its dry-run line."""
    text = " ".join(words)
    if text.startswith(ELSEWHERE):
        if block.directive != "dry-run":
            raise ValueError(
                f"`{text}` cannot run here: mark its block <!-- docs-test: dry-run --> and "
                "give its dry-run form beside it"
            )
        return None
    argv = []
    for word in words:
        for placeholder, real in paths.items():
            word = re.sub(rf"(?<![\w/]){re.escape(placeholder)}(?=$|[/,\s])", real, word)
        argv.append(word)
    program = next(i for i, w in enumerate(argv) if "=" not in w or w.startswith("-"))
    if argv[program] == "python":
        argv[program] = sys.executable
    if argv[program] == "make" and block.directive == "dry-run":
        argv.insert(program + 1, "-n")
    if "ib_jax.train" in argv:
        argv += TRAIN_OVERRIDES
    if block.directive == "dry-run" and "launch.tpu_pod" in argv and "--dry_run" not in argv:
        end = argv.index("--") if "--" in argv else len(argv)
        argv.insert(end, "--dry_run")
    if "CONFIG" in argv and "WORKDIR" in argv:  # the SLURM dry run's own placeholders
        argv[argv.index("CONFIG")] = "configs/tiny.py"
        argv[argv.index("WORKDIR")] = os.path.join(root, "slurm_workdir")
    return argv


def _run(argv: list[str], cwd: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    while argv and "=" in argv[0] and not argv[0].startswith("-"):
        key, value = argv.pop(0).split("=", 1)
        env[key] = value
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def documented() -> list[Block]:
    """Every block of commands or Python in the documentation."""
    return [b for path in DOCS for b in blocks(path) if is_commands(b) or b.language == "python"]


def test_every_unrunnable_block_says_why():
    """A skipped block says why, and the tests it relies on exist."""
    for block in documented():
        if block.directive == "skip":
            assert block.reason, f"{block.path}:{block.line}: docs-test: skip needs a reason"
            for named in re.findall(r"tests/\w+\.py", block.reason):  # the test it relies on
                assert os.path.isfile(os.path.join(REPO, named)), f"{block.path}: no {named}"


@pytest.mark.slow
def test_every_documented_command_runs(scratch):
    root, paths = scratch
    failures, ran = [], 0
    for block in documented():
        if block.directive == "skip":
            continue
        if block.language == "python":
            script = os.path.join(root, f"example_{os.path.basename(block.path)}_{block.line}.py")
            with open(script, "w") as f:
                f.write("\n".join(block.lines) + "\n")
            start, where = time.perf_counter(), f"{block.path}:{block.line}"
            done = _run([sys.executable, script], root)
            print(f"{time.perf_counter() - start:6.1f} s  {where}  (python example)")
            ran += 1
            if done.returncode != 0:
                failures.append(
                    f"{where}: python example exits {done.returncode}: " + done.stderr[-1500:]
                )
            continue
        for line, words in commands(block):
            try:
                argv = runnable(block, line, words, paths, root)
            except ValueError as error:
                failures.append(f"{block.path}:{line}: {error}")
                continue
            if argv is None:
                continue
            start = time.perf_counter()
            done = _run(argv, root)
            print(f"{time.perf_counter() - start:6.1f} s  {block.path}:{line}  {' '.join(words)}")
            ran += 1
            if done.returncode != 0:
                failures.append(
                    f"{block.path}:{line}: `{' '.join(words)}` exits {done.returncode}:\n"
                    + (done.stderr or done.stdout)[-1500:]
                )
    assert not failures, "\n\n".join(failures)
    assert ran >= 10
