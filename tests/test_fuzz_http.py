"""Garbage never gets a 5xx: generated requests over real HTTP to both services.

Each service runs as in production (robustloop.httpserver, the default body limits) on a free
port. At least 2,000 cases per service per run: the captured payloads with one value replaced or
one key removed, arbitrary JSON (the full Unicode range, lone surrogates included, integers of
thousands of digits, deep nesting), duplicate keys, arbitrary bytes, every kind of Content-Type,
chunked bodies; and slow clients. A case passes when the answer is below 500; the test passes
when every case did and the service still answers its health check. The seed is printed (set
``ROBUSTLOOP_FUZZ_SEED`` to replay a run).
"""

from __future__ import annotations

import copy
import json
import os
import random
import socket
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from tests.webhook_support import TOKEN, load_fixture

CASES = 2000
SEED = int(os.environ.get("ROBUSTLOOP_FUZZ_SEED", random.randrange(2**32)))

# Text from the whole of Unicode, surrogates included (hypothesis leaves them out by default).
any_text = st.text(st.characters(exclude_categories=()), max_size=30)
# Integers past Python's 4,300-digit limit, as literals spliced into the JSON text (hypothesis
# itself cannot print such ints when it reports a case).
HUGE = "@@huge-integer@@"
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.just(HUGE)
    | st.floats(allow_nan=True, allow_infinity=True)
    | any_text,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(any_text, children, max_size=5)
    ),
    max_leaves=20,
)
content_types = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/json; charset=utf-16",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/octet-stream",
        "",
        None,
    ]
)


def _dump(value: Any) -> bytes:
    text = json.dumps(value, ensure_ascii=True)  # lone surrogates become \\udXXX escapes
    return text.replace(json.dumps(HUGE), "7" * 5000).encode()


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


def mutated(base: Any) -> st.SearchStrategy[bytes]:
    paths = _paths(base)

    @st.composite
    def strategy(draw: st.DrawFn) -> bytes:
        payload = copy.deepcopy(base)
        path = draw(st.sampled_from(paths))
        parent: Any = payload
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.booleans()):
            parent[path[-1]] = draw(json_values)
        else:
            del parent[path[-1]]
        return _dump(payload)

    return strategy()


def duplicated(base: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """The payload with one of its keys given twice (the second value arbitrary)."""

    @st.composite
    def strategy(draw: st.DrawFn) -> bytes:
        key = draw(st.sampled_from(sorted(base)))
        text = _dump(base).decode()
        return (
            text[:-1] + f", {json.dumps(key)}: " + _dump(draw(json_values)).decode() + "}"
        ).encode()

    return strategy()


def bodies(base: dict[str, Any]) -> st.SearchStrategy[bytes]:
    deep = st.integers(min_value=100, max_value=100_000).map(lambda n: b"[" * n + b"]" * n)
    return st.one_of(
        mutated(base),
        duplicated(base),
        json_values.map(_dump),
        st.binary(max_size=300),
        deep,
    )


def _fuzz(post: Any) -> dict[int, int]:
    """Run CASES generated requests through ``post(body, content_type, chunked) -> status``."""
    statuses: dict[int, int] = {}
    print(f"fuzz seed {SEED} (ROBUSTLOOP_FUZZ_SEED={SEED} replays it)")

    @seed(SEED)
    @settings(
        max_examples=CASES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        data=st.data(),
        content_type=content_types,
        chunked=st.sampled_from([False, False, False, True]),
    )
    def case(data: st.DataObject, content_type: str | None, chunked: bool) -> None:
        status = post(data, content_type, chunked)
        statuses[status] = statuses.get(status, 0) + 1
        assert status < 500, f"status {status}"

    case()
    assert sum(statuses.values()) >= CASES
    return statuses


def _send(url: str, body: bytes, content_type: str | None, chunked: bool, **headers: str) -> int:
    if content_type is not None:
        headers["Content-Type"] = content_type
    data: Any = iter([body[i : i + 4096] for i in range(0, len(body), 4096)]) if chunked else body
    return requests.post(url, data=data, headers=headers, timeout=30).status_code


def test_the_receiver_never_answers_garbage_with_a_5xx(dry_receiver: tuple[str, object]) -> None:
    receiver, _ = dry_receiver
    base = load_fixture("alertmanager_firing.json")
    endpoints = st.sampled_from(["alerts", "alerts", "alerts", "list", "show"])

    def post(data: st.DataObject, content_type: str | None, chunked: bool) -> int:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        where = data.draw(endpoints)
        if where == "alerts":
            body = data.draw(bodies(base))
            return _send(f"{receiver}/api/v1/alerts", body, content_type, chunked, **auth)
        text = data.draw(any_text).encode("utf-8", "surrogatepass").hex()
        if where == "list":
            query = {"limit": data.draw(any_text), "state": data.draw(any_text)}
            query = {k: v.encode("utf-8", "replace").decode() for k, v in query.items()}
            url = f"{receiver}/api/v1/remediations"
            return requests.get(url, params=query, headers=auth, timeout=30).status_code
        url = f"{receiver}/api/v1/remediations/{text}"
        return requests.get(url, headers=auth, timeout=30).status_code

    statuses = _fuzz(post)
    assert statuses.get(400, 0) > 0


def test_the_model_server_never_answers_garbage_with_a_5xx(served_model: str) -> None:
    model_server = served_model
    infer = {
        "id": "r1",
        "inputs": [{"name": "images", "shape": [1, 784], "datatype": "UINT8", "data": [7] * 784}],
    }
    feedback = {"ids": ["a", "b"], "labels": [1, 2]}
    endpoints = st.sampled_from(["infer", "infer", "feedback", "metadata"])

    def post(data: st.DataObject, content_type: str | None, chunked: bool) -> int:
        where = data.draw(endpoints)
        url = f"{model_server}/v2/models/fashion-cnn"
        if where == "metadata":
            name = data.draw(any_text).encode("utf-8", "surrogatepass").hex()
            return requests.get(f"{model_server}/v2/models/{name}", timeout=30).status_code
        base = infer if where == "infer" else feedback
        body = data.draw(bodies(base))
        return _send(f"{url}/{where}", body, content_type, chunked)

    statuses = _fuzz(post)
    assert statuses.get(400, 0) > 0


SLOW_CLIENTS = 24
"""More slow connections than either service has request threads (8)."""


def _open_slowly(url: str, path: str, declared: int, headers: dict[str, str]) -> socket.socket:
    """A connection that sends its request line, headers and the first byte of a body of
    ``declared`` bytes, then stalls."""
    host, port = url.removeprefix("http://").split(":")
    conn = socket.create_connection((host, int(port)), timeout=30)
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {declared}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    conn.sendall(("\r\n".join(lines) + "\r\n\r\n{").encode())
    return conn


def _status_of(conn: socket.socket) -> int:
    first = conn.makefile("rb").readline().decode("latin-1")
    return int(first.split()[1])


@pytest.mark.parametrize("service", ["receiver", "model server"])
def test_slow_clients_hold_no_request_thread_and_get_a_4xx(
    service: str, request: pytest.FixtureRequest
) -> None:
    """Clients that trickle their bodies (a slowloris) are buffered by the server's event loop,
    not by its request threads: while 24 of them stall, the health check and a real request are
    answered; each stalled body, completed with garbage, gets a 4xx."""
    if service == "receiver":
        url, _ = request.getfixturevalue("dry_receiver")
        path, health = "/api/v1/alerts", f"{url}/healthz"
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        real = (f"{url}/api/v1/remediations", {"Authorization": f"Bearer {TOKEN}"})
    else:
        url = request.getfixturevalue("served_model")
        path, health = "/v2/models/fashion-cnn/infer", f"{url}/v2/health/ready"
        headers = {"Content-Type": "application/json"}
        real = (f"{url}/v2/models/fashion-cnn", {})
    slow = [_open_slowly(url, path, 64, headers) for _ in range(SLOW_CLIENTS)]
    try:
        assert requests.get(health, timeout=10).status_code == 200
        assert requests.get(real[0], headers=real[1], timeout=10).status_code == 200
        for conn in slow:
            conn.sendall(b'"not": "what was asked"' + b" " * (63 - 23))
        statuses = [_status_of(conn) for conn in slow]
    finally:
        for conn in slow:
            conn.close()
    assert all(400 <= s < 500 for s in statuses), statuses
    assert requests.get(health, timeout=10).status_code == 200
