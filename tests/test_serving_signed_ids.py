"""Signed sample ids (``serving.feedback_signing_key_file``): feedback that any replica holding
the key judges, and every id that is not one of ours refused with a 4xx, nothing counted.

Two apps built from one config stand for two replicas here (each its own registry, as each
process has); tests/test_serving_replicas.py runs two real `robustloop serve` processes.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from robustloop.config import ConfigError, RobustloopConfig, dump_config
from serving import RunningServer, create_app, get_state
from serving._decode import feedback_bounds, parse_json
from serving.errors import ServingError
from serving.feedback import SeenNonces
from serving.signed_ids import MAX_ID_CHARS, MIN_KEY_CHARS, SampleIdSigner
from tests.support import register_model
from training import ModelStore

MODEL = "fashion-cnn"
INFER = f"/v2/models/{MODEL}/infer"
FEEDBACK = f"/v2/models/{MODEL}/feedback"
KEY = "k" * 24 + "-signing-key-of-the-tests"
OTHER_KEY = "o" * 24 + "-another-replicas-own-key"


@pytest.fixture
def config(small_config: RobustloopConfig, tmp_path: Path) -> RobustloopConfig:
    key_file = tmp_path / "signing-key"
    key_file.write_text(KEY + "\n", encoding="utf-8")
    small_config.serving.feedback_signing_key_file = key_file
    small_config.serving.max_batch = 8
    return small_config


@pytest.fixture
def store(config: RobustloopConfig) -> ModelStore:
    return ModelStore(config.store.path)


@pytest.fixture
def version(store: ModelStore) -> str:
    return register_model(store)


Replica = tuple[FlaskClient, CollectorRegistry]


@pytest.fixture
def replicas(
    config: RobustloopConfig, store: ModelStore, version: str
) -> Iterator[Callable[[RobustloopConfig], Replica]]:
    """Builds a replica (its client and its own registry) from a config; closes them all."""
    apps: list[Flask] = []

    def make(cfg: RobustloopConfig) -> Replica:
        registry = CollectorRegistry()
        app = create_app(cfg, store=store, registry=registry, watch=False)
        apps.append(app)
        return app.test_client(), registry

    yield make
    for app in apps:
        get_state(app).close()


@pytest.fixture
def replica(replicas: Callable[[RobustloopConfig], Replica], config: RobustloopConfig) -> Replica:
    return replicas(config)


def infer(client: FlaskClient, n: int) -> tuple[list[str], list[int]]:
    body = {
        "inputs": [{"name": "x", "shape": [n, 784], "datatype": "UINT8", "data": [9] * 784 * n}]
    }
    response = client.post(INFER, json=body)
    assert response.status_code == 200, response.get_json()
    outputs = {o["name"]: o["data"] for o in response.get_json()["outputs"]}
    return outputs["sample_ids"], outputs["predicted_class"]


def counted(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    """(version, outcome) -> labels counted, of every feedback series."""
    return {
        (s.labels["version"], s.labels["outcome"]): s.value
        for metric in registry.collect()
        if metric.name == "robustloop_feedback"
        for s in metric.samples
        if s.name == "robustloop_feedback_total" and s.value
    }


def wrong(labels: list[int]) -> list[int]:
    return [(label + 1) % 10 for label in labels]


# -- any replica holding the key judges ----------------------------------------------------


def test_another_replica_holding_the_key_judges_the_ids_and_counts_them_once(
    replicas: Callable[[RobustloopConfig], Replica], config: RobustloopConfig, version: str
) -> None:
    """GIVEN two replicas with one key WHEN one predicts and the other gets the labels THEN the
    other counts them, under the version that predicted, and the issuing one counts nothing."""
    (first, first_registry), (second, second_registry) = replicas(config), replicas(config)
    ids, predicted = infer(first, 4)
    assert len(set(ids)) == 4 and all(len(i) <= MAX_ID_CHARS for i in ids)
    labels = predicted[:2] + wrong(predicted[2:])
    answer = second.post(FEEDBACK, json={"ids": ids, "labels": labels})
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json() == {"correct": 2, "wrong": 2, "unknown": 0}
    assert counted(second_registry) == {(version, "correct"): 2, (version, "wrong"): 2}
    assert counted(first_registry) == {}
    # Nothing of the prediction waits in either replica's memory.
    assert len(get_state(first.application).feedback) == 0


def test_without_a_key_only_the_issuing_process_knows_its_ids(
    replicas: Callable[[RobustloopConfig], Replica], config: RobustloopConfig, version: str
) -> None:
    """The unsigned path, unchanged: random ids that only the issuing process can judge; any
    other reports them unknown and counts nothing."""
    config.serving.feedback_signing_key_file = None
    (first, first_registry), (second, second_registry) = replicas(config), replicas(config)
    ids, predicted = infer(first, 2)
    assert all(len(i) == 32 for i in ids)
    elsewhere = second.post(FEEDBACK, json={"ids": ids, "labels": predicted})
    assert elsewhere.get_json() == {"correct": 0, "wrong": 0, "unknown": 2}
    assert counted(second_registry) == {}
    here = first.post(FEEDBACK, json={"ids": ids, "labels": predicted})
    assert here.get_json() == {"correct": 2, "wrong": 0, "unknown": 0}
    assert counted(first_registry) == {(version, "correct"): 2}


def test_feedback_counts_for_the_version_inside_the_id_after_a_swap(
    replica: Replica, store: ModelStore, version: str
) -> None:
    client, registry = replica
    ids, predicted = infer(client, 1)
    newer = register_model(store, seed=1)
    store.promote(newer, expect=version)
    watcher = get_state(client.application).watcher
    watcher.check()
    assert watcher.current is not None and watcher.current.version == newer
    assert client.post(FEEDBACK, json={"ids": ids, "labels": predicted}).status_code == 200
    assert counted(registry) == {(version, "correct"): 1}


# -- what is refused, and that nothing is counted then ---------------------------------------


def _alter(sample_id: str, offset: int) -> str:
    """The id with one byte of its signed content flipped, re-encoded (a well-formed id)."""
    raw = bytearray(base64.urlsafe_b64decode(sample_id + "=" * (-len(sample_id) % 4)))
    raw[offset] ^= 0x01
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


def _random_like(sample_id: str) -> str:
    """An id of the same length and format whose every other byte is random."""
    size = len(base64.urlsafe_b64decode(sample_id + "=" * (-len(sample_id) % 4)))
    raw = bytes([1]) + os.urandom(size - 1)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _signed(key: str, model: str = MODEL, version: str = "v0001-00000000", **kw: Any) -> str:
    (sample_id,) = SampleIdSigner(key.encode(), model, 600.0, **kw).issue(version, [0])
    return sample_id


BAD_IDS: list[tuple[str, Callable[[str, str], str], int, str]] = [
    ("class-altered", lambda good, v: _alter(good, 12), 403, "signature does not hold"),
    ("expiry-altered", lambda good, v: _alter(good, 8), 403, "signature does not hold"),
    ("version-altered", lambda good, v: _alter(good, 30), 403, "signature does not hold"),
    ("nonce-altered", lambda good, v: _alter(good, 20), 403, "signature does not hold"),
    ("mac-altered", lambda good, v: _alter(good, -1), 403, "signature does not hold"),
    ("another-key", lambda good, v: _signed(OTHER_KEY, version=v), 403, "another serving.feed"),
    ("another-model", lambda good, v: _signed(KEY, "other", v), 403, "signature does not hold"),
    ("random-bytes", lambda good, v: _random_like(good), 403, "signature does not hold"),
    ("another-format", lambda good, v: _alter(good, 0), 400, "of format 0, not 1"),
    ("unsigned-id", lambda good, v: "0123456789abcdef0123456789abcdef", 400, "not a signed"),
    ("not-base64", lambda good, v: good[:-2] + "!=", 400, "not a signed sample id"),
    ("truncated", lambda good, v: good[:40], 400, "not a signed sample id"),
    ("too-long", lambda good, v: good + "A" * MAX_ID_CHARS, 400, "not a signed sample id"),
    ("empty", lambda good, v: "", 400, "not a signed sample id"),
]


@pytest.mark.parametrize(
    ("make_bad", "status", "fragment"),
    [case[1:] for case in BAD_IDS],
    ids=[case[0] for case in BAD_IDS],
)
def test_an_id_that_is_not_ours_is_refused_with_a_4xx_and_nothing_is_counted(
    replica: Replica,
    version: str,
    make_bad: Callable[[str, str], str],
    status: int,
    fragment: str,
) -> None:
    """GIVEN a request with good ids and one forged, altered or malformed id THEN it is refused
    whole with a one-line reason that names the entry; the good ids are not used up."""
    client, registry = replica
    ids, predicted = infer(client, 2)
    bad = make_bad(ids[0], version)
    answer = client.post(FEEDBACK, json={"ids": [ids[0], bad, ids[1]], "labels": [0, 0, 0]})
    assert answer.status_code == status, answer.get_json()
    error = answer.get_json()["error"]
    assert error.startswith("ids[1] ") and fragment in error and "\n" not in error
    assert counted(registry) == {}
    good = client.post(FEEDBACK, json={"ids": ids, "labels": predicted})
    assert good.get_json() == {"correct": 2, "wrong": 0, "unknown": 0}


def test_an_expired_id_is_refused_with_410_and_nothing_is_counted(
    replica: Replica, config: RobustloopConfig, version: str
) -> None:
    """An id signed with the right key whose expiry has passed (issued a TTL and a second ago)."""
    client, registry = replica
    ttl = config.serving.feedback_ttl_seconds
    signer = SampleIdSigner(KEY.encode(), MODEL, ttl, clock=lambda: time.time() - ttl - 1)
    (expired,) = signer.issue(version, [3])
    answer = client.post(FEEDBACK, json={"ids": [expired], "labels": [3]})
    assert answer.status_code == 410
    assert "expired" in answer.get_json()["error"]
    assert "serving.feedback_ttl_seconds" in answer.get_json()["error"]
    assert counted(registry) == {}
    (fresh,) = SampleIdSigner(KEY.encode(), MODEL, ttl).issue(version, [3])
    assert client.post(FEEDBACK, json={"ids": [fresh], "labels": [3]}).status_code == 200


def test_a_replay_to_the_same_replica_is_a_409_and_counts_once(replica: Replica) -> None:
    client, registry = replica
    ids, predicted = infer(client, 2)
    first = client.post(FEEDBACK, json={"ids": ids[:1], "labels": predicted[:1]})
    assert first.status_code == 200
    before = counted(registry)
    replay = client.post(FEEDBACK, json={"ids": [ids[1], ids[0]], "labels": predicted})
    assert replay.status_code == 409
    assert replay.get_json()["error"].startswith("ids[1] was already judged")
    twice = client.post(FEEDBACK, json={"ids": [ids[1], ids[1]], "labels": [0, 0]})
    assert twice.status_code == 409 and twice.get_json()["error"].startswith("ids[1] ")
    assert counted(registry) == before, "a refused request counts nothing"
    assert client.post(FEEDBACK, json={"ids": ids[1:], "labels": [0]}).status_code == 200


def test_a_replay_to_another_replica_within_the_ttl_is_not_detected(
    replicas: Callable[[RobustloopConfig], Replica], config: RobustloopConfig, version: str
) -> None:
    """The documented limit (docs/security.md): a replica remembers only the ids it judged, so
    an id replayed to another replica within its TTL counts there again."""
    (first, first_registry), (second, second_registry) = replicas(config), replicas(config)
    ids, predicted = infer(first, 1)
    assert first.post(FEEDBACK, json={"ids": ids, "labels": predicted}).status_code == 200
    assert second.post(FEEDBACK, json={"ids": ids, "labels": predicted}).status_code == 200
    assert counted(first_registry) == counted(second_registry) == {(version, "correct"): 1}


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200) | st.from_regex(r"[A-Za-z0-9_-]{80,170}", fullmatch=True))
def test_any_string_is_judged_or_refused_as_a_client_error(sample_id: str) -> None:
    """Whatever a client sends as an id, verification ends in a 4xx error, never anything else
    (a 5xx); only a signed id passes."""
    signer = SampleIdSigner(KEY.encode(), MODEL, 600.0)
    try:
        signer.verify(sample_id, "ids[0]")
    except ServingError as exc:
        assert 400 <= exc.status < 500 and exc.message.startswith("ids[0] ")
    else:
        pytest.fail(f"{sample_id!r} verified")


# -- the key, the bounds ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("contents", "fragment"),
    [(None, "cannot read"), ("\n", "is empty"), ("short-key", f"fewer than the {MIN_KEY_CHARS}")],
)
def test_a_missing_empty_or_short_key_is_a_config_error_naming_the_setting(
    config: RobustloopConfig, store: ModelStore, tmp_path: Path, contents: str | None, fragment: str
) -> None:
    key_file = tmp_path / "bad-key"
    if contents is not None:
        key_file.write_text(contents, encoding="utf-8")
    config.serving.feedback_signing_key_file = key_file
    with pytest.raises(ConfigError, match=r"serving\.feedback_signing_key_file") as caught:
        create_app(config, store=store, registry=CollectorRegistry(), watch=False)
    assert fragment in str(caught.value)


def test_serve_with_an_unreadable_key_is_one_line_and_exit_2(
    config: RobustloopConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from robustloop.cli import main

    config.serving.feedback_signing_key_file = tmp_path / "missing-key"
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(config), encoding="utf-8")
    assert main(["--config", str(path), "serve", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "serving.feedback_signing_key_file" in err[0]


def test_the_largest_legal_signed_feedback_fits_the_body_bounds(
    replica: Replica, config: RobustloopConfig
) -> None:
    """A request of as many ids of the longest signed form as one request may hold is read (and
    judged: here refused as forged, 403), never a 413; one more entry is refused as too many."""
    client, registry = replica
    entries = config.serving.feedback_burst_per_client
    long_id = _alter(_signed(KEY, version="v" + "9" * 54 + "-0123abcd"), -1)
    assert len(long_id) == MAX_ID_CHARS
    body = json.dumps({"ids": [long_id] * entries, "labels": [9] * entries}).encode()
    bounds = feedback_bounds(config.serving.max_body_bytes, entries, MAX_ID_CHARS)
    assert len(body) <= bounds.max_bytes
    parse_json(body, bounds.max_values)  # not too many values either
    answer = client.post(FEEDBACK, data=body, content_type="application/json")
    assert answer.status_code == 403, answer.get_json()
    over = {"ids": [long_id] * (entries + 1), "labels": [9] * (entries + 1)}
    assert client.post(FEEDBACK, json=over).status_code in {400, 413}
    assert counted(registry) == {}


# -- the replay memory ------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_seen_nonces_are_forgotten_when_their_ids_expire() -> None:
    clock = Clock()
    seen = SeenNonces(max_entries=10, clock=clock)
    assert seen.claim([b"a", b"b"], [1005.0, 1010.0]) is None
    assert seen.claim([b"c", b"a"], [1010.0, 1010.0]) == 1
    assert len(seen) == 2, "a refused claim records nothing"
    clock.now = 1005.0  # a's id has expired: it is refused as expired before it gets here
    assert seen.claim([b"a"], [1020.0]) is None
    assert seen.claim([b"b"], [1020.0]) == 0
    clock.now = 1020.0  # both expired: forgotten at the next claim
    assert seen.claim([b"a"], [1030.0]) is None
    assert len(seen) == 1


def test_seen_nonces_when_full_the_largest_claimer_forgets_its_oldest() -> None:
    clock = Clock()
    seen = SeenNonces(max_entries=4, clock=clock)
    assert seen.claim([b"canary"], [2000.0], client="canary") is None
    flood = [bytes([i]) for i in range(6)]
    for nonce in flood:
        assert seen.claim([nonce], [2000.0], client="flood") is None
    assert len(seen) == 4
    assert seen.claim([b"canary"], [2000.0], client="anyone") == 0, "the canary's is kept"
    assert seen.claim([flood[0]], [2000.0], client="flood") is None, "the flood's oldest went"
    assert seen.claim([flood[-1]], [2000.0], client="flood") == 0


def test_seen_nonces_claim_duplicates_within_one_request() -> None:
    seen = SeenNonces(max_entries=10, clock=Clock())
    assert seen.claim([b"a", b"b", b"a"], [2000.0] * 3) == 2
    assert len(seen) == 0


# -- a real OIP client ------------------------------------------------------------------------


def test_tritonclient_reads_signed_ids_in_binary_and_they_are_fed_back(
    config: RobustloopConfig, version: str
) -> None:
    """Triton's HTTP client takes the signed ids as it takes any BYTES output (binary by
    default); sent back as they came, they count."""
    registry = CollectorRegistry()
    app = create_app(config, registry=registry)
    try:
        with RunningServer(app) as running:
            client = triton.InferenceServerClient(url=running.url.removeprefix("http://"))
            try:
                images = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
                tensor = triton.InferInput("images", list(images.shape), "FP32")
                tensor.set_data_from_numpy(images)
                result = client.infer(MODEL, [tensor])
            finally:
                client.close()
            ids = [i.decode() for i in result.as_numpy("sample_ids")]
            predicted = result.as_numpy("predicted_class").tolist()
            answer = requests.post(
                f"{running.url}{FEEDBACK}", json={"ids": ids, "labels": predicted}, timeout=10
            )
            assert answer.json() == {"correct": 3, "wrong": 0, "unknown": 0}
    finally:
        get_state(app).close()
    assert counted(registry) == {(version, "correct"): 3}
