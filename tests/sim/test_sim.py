"""The model-based simulation suite: generated sources, faults, kills and retries, checked after every step.

Each scenario (``spec.py``) seeds a sandbox, then runs steps against it: runs (with or without ``--full``),
runs in a real ``syncengine run`` process that is SIGKILLed and resumed, and ``retry`` of failures, under random
5xx, drops before and after apply, 429s, record locks and token expiry. After every step ``driver.py`` checks:

(a) the sandbox's state equals the plain in-memory model (``model.py``);
(b) no key's history of applied writes ever goes backwards (``checks.py``);
(c) every ledger outcome agrees with that history, one per change, and the run summary adds up;
and, on the wire, no key in two calls at once, no more calls in flight than configured, one token refresh at a time.

How many scenarios: ``SIM_SCENARIOS`` (default 300; ``make soak`` runs 5000). A failing scenario is written as
JSON and printed with its schedule; replay it (the same sources, faults and kills) with one command::

    SIM_REPLAY=/tmp/syncengine-sim/<name>.json .venv/bin/python -m pytest tests/sim -k replay -s

or replay a seeded scenario of the plain generator with ``SIM_SEED=<n>`` (same command), or sweep seeds with
``SIM_SEEDS=0-199 .venv/bin/python -m pytest tests/sim -k seeded -s`` (every failing seed is listed).
Minimal failing examples found so far live in ``regressions/`` and run every time. A replay has the same
sources, fault seeds, fault rates and kill points; the engine's own timing (backoff jitter, batching windows)
can still differ, so a failure that needs one exact interleaving may take a few replays. Hypothesis shrinks a
failure for at most ``SIM_SHRINK_SECONDS`` (default 90) before it reports the smallest one found.
"""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
import time
from pathlib import Path

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.sim.driver import Outcome, run_spec
from tests.sim.spec import Spec, generate
from tests.sim.totals import TOTALS

SCENARIOS = int(os.environ.get("SIM_SCENARIOS", "300"))
SHRINK_SECONDS = float(os.environ.get("SIM_SHRINK_SECONDS", "90"))  # then Hypothesis reports the smallest so far
FAILURES = Path(os.environ.get("SIM_FAILURES", Path(tempfile.gettempdir()) / "syncengine-sim"))
REGRESSIONS = Path(__file__).parent / "regressions"
REPLAY_COMMAND = "SIM_REPLAY={path} .venv/bin/python -m pytest tests/sim -k replay -s"

_failed: dict[str, str] = {}  # spec JSON -> report: a failure stays a failure when Hypothesis replays it
_first_failure: list[float] = []


def _save(spec: Spec) -> Path:
    text = spec.to_json()
    FAILURES.mkdir(parents=True, exist_ok=True)
    path = FAILURES / f"sim-{hashlib.sha1(text.encode()).hexdigest()[:12]}.json"
    path.write_text(text + "\n", encoding="utf-8")
    return path


def _report(spec: Spec, out: Outcome, path: Path) -> str:
    shown = "\n".join(f"  {v}" for v in out.violations[:25])
    more = f"\n  ... {len(out.violations) - 25} more" if len(out.violations) > 25 else ""
    return (
        f"{len(out.violations)} violations in a scenario of {len(spec.steps)} steps:\n{shown}{more}\n"
        f"schedule:\n{spec.describe()}\n"
        f"replay: {REPLAY_COMMAND.format(path=path)}"
    )


def _fail(report: str) -> None:
    # One raise site: Hypothesis tells failures apart by where they are raised, and these are one kind.
    raise AssertionError(report)


def run_and_check(spec: Spec) -> None:
    """Run ``spec``; raise AssertionError with the violations, the schedule and the replay command."""
    text = spec.to_json()
    if text in _failed:
        _fail(_failed[text])
    with tempfile.TemporaryDirectory(prefix="sim-") as directory:
        started = time.monotonic()
        out = anyio.run(run_spec, spec, Path(directory))
    TOTALS.add(out, time.monotonic() - started)
    if out.violations:
        _failed[text] = _report(spec, out, _save(spec))
        _first_failure.append(time.monotonic())
        _fail(_failed[text])


# About a second a scenario on a busy two-core machine: allow three, and the shrink budget (the default is 300 s).
@pytest.mark.timeout(300 + 3 * SCENARIOS + SHRINK_SECONDS)
@settings(
    max_examples=SCENARIOS,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
@given(rnd=st.randoms(use_true_random=False))
def test_generated_scenarios_keep_every_promise(rnd: random.Random) -> None:
    """Generated exports, faults, kills and retries: state = model, no key goes backwards, outcomes are true."""
    if _first_failure and time.monotonic() - _first_failure[0] > SHRINK_SECONDS:
        spec = generate(rnd)
        if spec.to_json() not in _failed:
            return  # the shrink budget is spent: Hypothesis reports the smallest failure found so far
    run_and_check(generate(rnd))


@pytest.mark.parametrize("path", sorted(REGRESSIONS.glob("*.json")), ids=lambda p: p.stem)
def test_regression_example_keeps_every_promise(path: Path) -> None:
    """A minimal failing scenario found earlier (see regressions/README.md) keeps every promise now."""
    run_and_check(Spec.from_json(path.read_text(encoding="utf-8")))


@pytest.mark.skipif(not (os.environ.get("SIM_REPLAY") or os.environ.get("SIM_SEED")), reason="SIM_REPLAY/SIM_SEED")
def test_replay_one_scenario() -> None:
    """Replays the scenario in SIM_REPLAY (a JSON file) or the one generate() draws from SIM_SEED."""
    replay = os.environ.get("SIM_REPLAY")
    if replay:
        spec = Spec.from_json(Path(replay).read_text(encoding="utf-8"))
    else:
        spec = generate(random.Random(int(os.environ["SIM_SEED"])))
    print(spec.describe())
    run_and_check(spec)


def _seeds(text: str) -> range:
    first, _, last = text.partition("-")
    return range(int(first), int(last or first) + 1)


@pytest.mark.skipif(not os.environ.get("SIM_SEEDS"), reason="set SIM_SEEDS=a-b to sweep seeded scenarios")
@pytest.mark.timeout(300 + 3 * len(_seeds(os.environ.get("SIM_SEEDS") or "0")))
def test_seeded_scenarios_keep_every_promise() -> None:
    """Every seed in SIM_SEEDS (a-b) keeps every promise; lists each failing seed with its first violations."""
    failing: list[str] = []
    for seed in _seeds(os.environ["SIM_SEEDS"]):
        spec = generate(random.Random(seed))
        try:
            run_and_check(spec)
        except AssertionError as exc:
            first = str(exc).splitlines()[1:4]
            failing.append(f"SIM_SEED={seed}: " + " | ".join(line.strip() for line in first))
    assert not failing, f"{len(failing)} failing seeds:\n" + "\n".join(failing)
