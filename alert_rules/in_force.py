"""Whether a Prometheus has loaded the rules that judge a given model version.

Rendering or publishing rules is not the same as Prometheus evaluating them: the embedded stack
reloads its Prometheus when the rules file changes, and on a cluster the Prometheus Operator's
config reloader picks up a changed PrometheusRule within a minute or so. A promotion waits here
until the rules calibrated for the candidate are in force, so that no moment passes in which the
new version is served and its label-free alerts judge nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import requests

from alert_rules._spec import GROUP


class RulesNotInForce(Exception):
    """Prometheus did not load the rules in time, or could not be asked; the message says which."""


def rules_in_force(prometheus_url: str, version: str, *, timeout: float = 10.0) -> bool:
    """Whether the detection rules Prometheus evaluates judge ``version`` (their label-free
    alerts select ``version="<version>"``).

    Raises:
        RulesNotInForce: Prometheus cannot be reached or answers something else than its rules.
    """
    try:
        answer = requests.get(
            f"{prometheus_url.rstrip('/')}/api/v1/rules", params={"type": "alert"}, timeout=timeout
        )
        answer.raise_for_status()
        groups = answer.json()["data"]["groups"]
    except (requests.RequestException, ValueError, KeyError, TypeError) as exc:
        raise RulesNotInForce(
            f"cannot read the rules of Prometheus at {prometheus_url}: {exc}"
        ) from None
    selector = f'version="{version}"'
    return any(
        selector in str(rule.get("query", ""))
        for group in groups
        if isinstance(group, dict) and group.get("name") == GROUP
        for rule in group.get("rules", [])
        if isinstance(rule, dict)
    )


def wait_until_in_force(
    prometheus_url: str,
    version: str,
    timeout_seconds: float,
    *,
    poll_seconds: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> float:
    """Wait until :func:`rules_in_force` holds for ``version``; returns the seconds waited.

    Prometheus that cannot be reached is asked again until the time is up.

    Raises:
        RulesNotInForce: not in force after ``timeout_seconds`` (the message says what to check).
    """
    started = clock()
    last_error = ""
    while True:
        try:
            if rules_in_force(prometheus_url, version):
                return clock() - started
            last_error = ""
        except RulesNotInForce as exc:
            last_error = f" (last answer: {exc})"
        if clock() - started >= timeout_seconds:
            raise RulesNotInForce(
                f"Prometheus at {prometheus_url} did not load the rules that judge {version} "
                f"within {timeout_seconds:g} s{last_error}; check that it reads the published "
                "rules (on a cluster: the PrometheusRule's labels and the Prometheus' "
                "ruleSelector)"
            )
        sleep(poll_seconds)


__all__ = ["RulesNotInForce", "rules_in_force", "wait_until_in_force"]
