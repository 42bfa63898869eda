"""Must show 10: 2,000+ generated requests to ``/api/v1/alerts``, never a 5xx for garbage.

Three kinds of input: the captured Alertmanager payload with one value replaced by arbitrary
JSON or one key removed, arbitrary JSON documents, and arbitrary bytes. Flask's test client
drives the real app (auth, size limit, parsing, the SQLite outbox) to keep 2,000 cases fast.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from robustloop.config import RobustloopConfig
from tests.webhook_support import TOKEN, load_fixture
from webhook import create_app, receiver_of
from webhook.submitters import Submitted
from workflows.contract import RunSummary

CASES = 2100

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=20,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


BASE = load_fixture("alertmanager_firing.json")
PATHS = _paths(BASE)


@st.composite
def mutated_payloads(draw: st.DrawFn) -> bytes:
    payload = copy.deepcopy(BASE)
    path = draw(st.sampled_from(PATHS))
    parent: Any = payload
    for key in path[:-1]:
        parent = parent[key]
    if draw(st.booleans()):
        parent[path[-1]] = draw(json_values)
    else:
        del parent[path[-1]]
    return json.dumps(payload).encode()


bodies = st.one_of(
    mutated_payloads(),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=300),
)


class _NeverCalled:
    kind = "argo"

    def submit(self, name: str, parameters: dict[str, str]) -> Submitted:
        raise AssertionError("the fuzz must not reach the submitter (dispatcher stopped)")

    def status(self, name: str) -> RunSummary | None:
        raise AssertionError("the fuzz must not reach the submitter")

    def close(self) -> None:
        pass


def test_fuzzed_alerts_never_get_a_5xx(small_config: RobustloopConfig, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN, encoding="utf-8")
    small_config.webhook.token_file = token_file
    small_config.webhook.max_body_bytes = 4096
    app = create_app(
        small_config,
        submitter=_NeverCalled(),
        registry=CollectorRegistry(),
        start_dispatcher=False,
    )
    client = app.test_client()
    statuses: dict[int, int] = {}

    @settings(
        max_examples=CASES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(body=bodies, authorised=st.sampled_from([True, True, True, False]))
    def deliver(body: bytes, authorised: bool) -> None:
        headers = {"Authorization": f"Bearer {TOKEN}"} if authorised else {}
        answer = client.post(
            "/api/v1/alerts", data=body, headers=headers, content_type="application/json"
        )
        statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
        assert answer.status_code < 500, answer.get_data(as_text=True)
        assert answer.status_code in (200, 400, 401, 413), answer.status_code
        if answer.status_code != 200:
            assert answer.get_json()["error"]
        if not authorised:
            assert answer.status_code == 401

    try:
        deliver()
    finally:
        receiver_of(app).close()
    assert sum(statuses.values()) >= 2000
    assert statuses.get(400, 0) > 0 and statuses.get(401, 0) > 0 and statuses.get(200, 0) > 0
