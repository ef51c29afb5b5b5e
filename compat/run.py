"""Run Dramatiq's own test suite against a plain RabbitmqBroker and against fairlane's broker.

    python compat/run.py                          # both brokers, sdist selection
    python compat/run.py --broker fairlane        # only fairlane (compared with the last plain run)
    python compat/run.py --full                   # also tests/middleware/ from the repository
    python compat/run.py tests/test_actors.py::test_workers_can_be_paused   # chosen tests only

Downloads the pinned sdist (``pip download --no-deps --no-binary :all: dramatiq==2.2.1``)
into ``compat/.cache/``, unpacks it, lays out ``compat/.cache/run/tests/`` (the sdist's
tests, our ``conftest.py`` and ``common.py``; with ``--full`` also ``tests/middleware/`` from
a Dramatiq git mirror), runs pytest once per broker and prints, per test file, how many tests
were selected and passed on each broker, then every test that passes on plain RabbitMQ but not
on fairlane with a one-line reason.

Such a test not listed in ``compat/expected_differences.txt`` is run once more on fairlane, on
its own: one that passes then is reported as flaky (failed in the suite run, passed alone).

Exit status: 0 when every such test is listed in ``compat/expected_differences.txt`` or passed
when re-run; 1 when one is not; 2 when a run could not be completed (download, services, pytest
crash).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import selection  # noqa: E402

CACHE = HERE / ".cache"
SDIST_DIR = CACHE / "sdist"
RUN_DIR = CACHE / "run"
RESULTS_DIR = CACHE / "results"
EXPECTED_FILE = HERE / "expected_differences.txt"
DEFAULT_GIT_DIR = os.environ.get("DRAMATIQ_GIT_DIR", "/work/.mirror/Bogdanp+dramatiq/repo")
BROKERS = ("rabbitmq", "fairlane")
LABELS = {"rabbitmq": "plain RabbitmqBroker", "fairlane": "fairlane"}


class CompatError(Exception):
    """The run could not be set up or completed."""


# -- the pinned sdist ------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as data:
        for chunk in iter(lambda: data.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def ensure_sdist() -> Path:
    """Download (once) and unpack the pinned Dramatiq sdist; return the unpacked tree."""
    version = selection.DRAMATIQ_VERSION
    tree = CACHE / f"dramatiq-{version}"
    tarball = SDIST_DIR / f"dramatiq-{version}.tar.gz"
    if not tarball.exists():
        SDIST_DIR.mkdir(parents=True, exist_ok=True)
        print(f"downloading dramatiq=={version} (sdist) into {SDIST_DIR.relative_to(HERE.parent)}")
        command = [
            sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
            f"dramatiq=={version}", "--dest", str(SDIST_DIR),
        ]  # fmt: skip
        if subprocess.run(command, check=False).returncode != 0 or not tarball.exists():
            raise CompatError(f"pip could not download the dramatiq=={version} sdist")
    digest = _sha256(tarball)
    if digest != selection.SDIST_SHA256:
        raise CompatError(f"{tarball} has sha256 {digest}, expected {selection.SDIST_SHA256}: delete it")
    if not (tree / "tests").is_dir():
        with tarfile.open(tarball) as archive:
            archive.extractall(CACHE, filter="data")
    return tree


def extract_middleware_tests(git_dir: str, destination: Path) -> None:
    """Copy tests/middleware/ of the commit matching the sdist out of a Dramatiq git mirror."""
    commit = selection.DRAMATIQ_COMMIT
    if not Path(git_dir).exists():
        raise CompatError(f"--full needs a Dramatiq git mirror; {git_dir} does not exist (--dramatiq-git)")
    archive = subprocess.run(
        ["git", f"--git-dir={git_dir}", "archive", "--format=tar", commit, "tests/middleware"],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        raise CompatError(f"git archive {commit} tests/middleware failed: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(destination)], input=archive.stdout, check=True)


# -- the run directory -----------------------------------------------------------------------------


def prepare_run_dir(tree: Path, *, full: bool, git_dir: str, timeout: float) -> None:
    """compat/.cache/run: the sdist's tests/ with our conftest and common helpers."""
    if RUN_DIR.exists():
        shutil.rmtree(RUN_DIR)
    tests = RUN_DIR / "tests"
    shutil.copytree(tree / "tests", tests)
    (tests / "__init__.py").touch()
    shutil.copy(HERE / "conftest.py", tests / "conftest.py")
    shutil.copy(HERE / "common.py", tests / "common.py")
    if full:
        extract_middleware_tests(git_dir, RUN_DIR)
        (tests / "middleware" / "__init__.py").touch()
    (RUN_DIR / "selection.json").write_text(json.dumps({"deselect": selection.deselected_ids()}, indent=1))
    (RUN_DIR / "pytest.ini").write_text(
        "[pytest]\n"
        "addopts = -p no:cacheprovider\n"
        f"timeout = {timeout:g}\n"
        "timeout_method = signal\n"
        "filterwarnings = ignore::DeprecationWarning:pika.*\n"
    )


def _normalise_target(target: str) -> str:
    path, sep, rest = target.partition("::")
    path = path.removeprefix("compat/.cache/run/")
    if not path.startswith("tests/"):
        path = "tests/" + path
    return path + sep + rest


# -- running pytest --------------------------------------------------------------------------------


@dataclass
class Outcome:
    outcome: str  # passed | failed | error | skipped | not run
    reason: str = ""


def run_pytest(
    broker: str, targets: list[str], *, extra: list[str], run_timeout: float, name: str = ""
) -> dict[str, Outcome]:
    """Run the selection on one broker; return each test's outcome (``name`` tells runs apart)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    report = RESULTS_DIR / f"{broker}{name}.jsonl"
    log = RESULTS_DIR / f"{broker}{name}.log"
    report.unlink(missing_ok=True)
    env = dict(os.environ, COMPAT_REPORT=str(report), COMPAT_BROKER=broker)
    command = [
        sys.executable, "-m", "pytest", "-c", str(RUN_DIR / "pytest.ini"), "--rootdir", str(RUN_DIR),
        f"--compat-broker={broker}", "-q", "--tb=short", "-rfE", f"--session-timeout={run_timeout:g}",
        "-p", "no:cloudcoil",  # a plugin of the chart tests' CRD models: not wanted here
        *extra, *targets,
    ]  # fmt: skip
    started = time.monotonic()
    print(f"running on {LABELS[broker]} (log: {log.relative_to(HERE.parent)}) ...", flush=True)
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=RUN_DIR, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
        try:
            code = process.wait(timeout=run_timeout + 120)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            code = -1
            print(f"  the run exceeded {run_timeout + 120:g} s and was killed", flush=True)
    outcomes = read_report(report)
    summary = _last_line(log)
    print(f"  {summary}  [{time.monotonic() - started:.0f} s, exit {code}]", flush=True)
    if not outcomes:  # a selection always has tests: none ran means the run itself failed
        raise CompatError(f"pytest on {broker} exited {code} without results ({summary}); see {log}")
    if code not in (0, 1, 5):
        print(f"  warning: pytest exited {code}; outcomes may be incomplete (see {log})", flush=True)
    return outcomes


def _last_line(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def read_report(path: Path) -> dict[str, Outcome]:
    """Fold the per-phase JSON lines the conftest wrote into one outcome per test."""
    outcomes: dict[str, Outcome] = {}
    if not path.exists():
        return outcomes
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        nodeid, when, result, reason = entry["nodeid"], entry["when"], entry["outcome"], entry["reason"]
        current = outcomes.get(nodeid)
        if result == "failed":
            if current is None or current.outcome in ("passed", "skipped"):
                kind = "failed" if when == "call" else "error"
                outcomes[nodeid] = Outcome(kind, reason if when == "call" else f"{when}: {reason}")
        elif result == "skipped":
            if current is None:
                outcomes[nodeid] = Outcome("skipped", reason)
        elif when == "call" and current is None:
            outcomes[nodeid] = Outcome("passed")
    return outcomes


# -- comparing -------------------------------------------------------------------------------------


def load_expected() -> dict[str, str]:
    """compat/expected_differences.txt: `test id  # reason` per line."""
    expected: dict[str, str] = {}
    if not EXPECTED_FILE.exists():
        return expected
    for raw in EXPECTED_FILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        test_id, _, reason = line.partition("#")
        expected[test_id.strip()] = reason.strip()
    return expected


def _is_expected(nodeid: str, expected: dict[str, str]) -> bool:
    return nodeid in expected or nodeid.split("[", 1)[0] in expected


def _short(reason: str, limit: int = 180) -> str:
    return reason if len(reason) <= limit else reason[: limit - 3] + "..."


def _file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def unexpected_regressions(results: dict[str, dict[str, Outcome]]) -> list[str]:
    """Tests that passed on plain RabbitMQ, did not on fairlane, and are not expected not to."""
    plain, fair = results.get("rabbitmq"), results.get("fairlane")
    if plain is None or fair is None:
        return []
    expected = load_expected()
    return [
        i for i, o in sorted(plain.items()) if o.outcome == "passed"
        and fair.get(i, Outcome("not run")).outcome != "passed" and not _is_expected(i, expected)
    ]  # fmt: skip


def rerun_alone(nodeids: list[str], *, extra: list[str], run_timeout: float) -> dict[str, Outcome]:
    """Run ``nodeids`` once more on fairlane, in a run of their own; the ones that pass now."""
    print(f"re-running {len(nodeids)} unexpected difference(s) on their own:", flush=True)
    outcomes = run_pytest("fairlane", nodeids, extra=extra, run_timeout=run_timeout, name="-rerun")
    return {i: o for i, o in outcomes.items() if o.outcome == "passed"}


def report(
    results: dict[str, dict[str, Outcome]], baseline_note: str, flaky: dict[str, Outcome] | None = None
) -> int:
    plain, fair = results.get("rabbitmq"), results.get("fairlane")
    nodeids = sorted(set().union(*(set(r) for r in results.values())))
    files: dict[str, list[str]] = defaultdict(list)
    for nodeid in nodeids:
        files[_file_of(nodeid)].append(nodeid)

    def passed(outcomes: dict[str, Outcome] | None, ids: list[str]) -> str:
        if outcomes is None:
            return "-"
        return str(sum(1 for i in ids if outcomes.get(i, Outcome("not run")).outcome == "passed"))

    width = max([len(f) for f in files] + [len("total")])
    print()
    if baseline_note:
        print(baseline_note)
    print(f"{'file':<{width}}  {'selected':>8}  {'plain':>5}  {'fairlane':>8}")
    for name in sorted(files):
        ids = files[name]
        print(f"{name:<{width}}  {len(ids):>8}  {passed(plain, ids):>5}  {passed(fair, ids):>8}")
    print(f"{'total':<{width}}  {len(nodeids):>8}  {passed(plain, nodeids):>5}  {passed(fair, nodeids):>8}")

    if plain is None or fair is None:
        only = fair if fair is not None else plain
        assert only is not None
        failing = [(i, o) for i, o in sorted(only.items()) if o.outcome in ("failed", "error")]
        if failing:
            print(f"\nnot passing ({len(failing)}), no baseline to compare with:")
            for nodeid, outcome in failing:
                print(f"  {nodeid}\n      {outcome.outcome}: {_short(outcome.reason)}")
        return 0

    expected = load_expected()
    regressions = [
        i for i in nodeids if plain.get(i, Outcome("not run")).outcome == "passed"
        and fair.get(i, Outcome("not run")).outcome != "passed"
    ]  # fmt: skip
    unexpected = [i for i in regressions if not _is_expected(i, expected) and i not in (flaky or {})]
    print(f"\npass on plain RabbitmqBroker, not on fairlane: {len(regressions)}", end="")
    print(f" ({len(unexpected)} not in expected_differences.txt)")
    for nodeid in regressions:
        outcome = fair.get(nodeid, Outcome("not run"))
        mark = "  (expected)" if _is_expected(nodeid, expected) else ""
        mark = "  (flaky)" if nodeid in (flaky or {}) else mark
        print(f"  {nodeid}{mark}\n      {outcome.outcome}: {_short(outcome.reason)}")
    improvements = [
        i for i in nodeids if fair.get(i, Outcome("not run")).outcome == "passed"
        and plain.get(i, Outcome("not run")).outcome != "passed"
    ]  # fmt: skip
    if improvements:
        print(f"\npass on fairlane, not on plain RabbitmqBroker: {len(improvements)}")
        for nodeid in improvements:
            print(f"  {nodeid}  (plain: {plain.get(nodeid, Outcome('not run')).outcome})")
    if flaky:
        print(f"\nfailed on fairlane in the suite run, passed when re-run on their own: {len(flaky)}")
        for nodeid in sorted(flaky):
            print(f"  {nodeid}\n      suite run: {_short(fair.get(nodeid, Outcome('not run')).reason)}")
    stale = [e for e in expected if not any(i == e or i.split("[", 1)[0] == e for i in regressions)]
    ran = {i.split("[", 1)[0] for i in nodeids} | set(nodeids)
    stale = [e for e in stale if e in ran]
    if stale:
        print("\nlisted in expected_differences.txt but not a difference in this run:")
        for test_id in stale:
            print(f"  {test_id}")
    return 1 if unexpected else 0


def _save(broker: str, suffix: str, outcomes: dict[str, Outcome]) -> None:
    data = {nodeid: [o.outcome, o.reason] for nodeid, o in outcomes.items()}
    (RESULTS_DIR / f"{broker}{suffix}.json").write_text(json.dumps(data, indent=1, sort_keys=True))


def _load(broker: str, suffix: str) -> dict[str, Outcome] | None:
    path = RESULTS_DIR / f"{broker}{suffix}.json"
    if not path.exists():
        return None
    return {nodeid: Outcome(*value) for nodeid, value in json.loads(path.read_text()).items()}


# -- main ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "tests", nargs="*", help="test ids to run instead of the selection (tests/test_x.py::name)"
    )
    parser.add_argument("--broker", choices=("both", *BROKERS), default="both")
    parser.add_argument("--full", action="store_true", help="also run tests/middleware/ from the git mirror")
    parser.add_argument("--dramatiq-git", default=DEFAULT_GIT_DIR, help="Dramatiq git dir for --full")
    parser.add_argument("--timeout", type=float, default=20, help="seconds per test (default 20)")
    parser.add_argument("--run-timeout", type=float, default=600, help="seconds per broker run (default 600)")
    parser.add_argument("-k", dest="keyword", help="pytest -k expression")
    parser.add_argument("--list-excluded", action="store_true", help="print the exclusions and exit")
    args = parser.parse_args(argv)

    if args.list_excluded:
        for test_id, reason in selection.EXCLUDED.items():
            print(f"- `{test_id}`: {reason}")
        return 0
    if any(_normalise_target(t).startswith("tests/middleware/") for t in args.tests):
        args.full = True  # those tests come from the git mirror
    try:
        import dramatiq

        if dramatiq.__version__ != selection.DRAMATIQ_VERSION:
            wanted = selection.DRAMATIQ_VERSION
            print(f"warning: the venv has dramatiq {dramatiq.__version__}, the tests are {wanted}")
        tree = ensure_sdist()
        prepare_run_dir(tree, full=args.full, git_dir=args.dramatiq_git, timeout=args.timeout)
        if args.tests:
            targets = [_normalise_target(t) for t in args.tests]
        else:
            targets = selection.SDIST + (selection.FULL if args.full else [])
        extra = ["--timeout", f"{args.timeout:g}"] + (["-k", args.keyword] if args.keyword else [])
        brokers = BROKERS if args.broker == "both" else (args.broker,)
        suffix = "-full" if args.full else ""
        chosen = bool(args.tests or args.keyword)
        results: dict[str, dict[str, Outcome]] = {}
        for broker in brokers:
            results[broker] = run_pytest(broker, targets, extra=extra, run_timeout=args.run_timeout)
            if not chosen:
                _save(broker, suffix, results[broker])
        # A test that fails on fairlane only inside the suite run (timing, another test's
        # leftovers) is run once more on its own; if it passes then, it is reported as flaky
        # (and does not fail the run) rather than hidden.
        unexpected = unexpected_regressions(results)
        flaky = rerun_alone(unexpected, extra=extra, run_timeout=args.run_timeout) if unexpected else {}
    except CompatError as error:
        print(f"compat: {error}", file=sys.stderr)
        return 2

    note = ""
    if len(brokers) == 1:
        other = "fairlane" if brokers[0] == "rabbitmq" else "rabbitmq"
        saved = _load(other, suffix) or _load(other, "-full" if not suffix else "")
        if saved is not None:
            ran = set(results[brokers[0]])
            results[other] = {i: o for i, o in saved.items() if i in ran}
            note = f"({LABELS[other]} column: from its last saved run of the whole selection)"
    return report(results, note, flaky)


if __name__ == "__main__":
    sys.exit(main())
