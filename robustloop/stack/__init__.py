"""The embedded one-machine stack: ``robustloop up`` and ``robustloop demo``.

Real Prometheus and Alertmanager binaries, the model server and the receiver, started on
127.0.0.1 with free ports from configs generated into a run folder; a scenario driver that
attacks the served model and watches the loop close; and the report it writes.
"""

from robustloop.stack.local import LocalStack, production_version
from robustloop.stack.report import Sample, Timeline, summarise, write_report
from robustloop.stack.run_folder import Ports, RunFolder, prepare_run_folder
from robustloop.stack.scenario import ScenarioOptions, ScenarioRunner
from robustloop.stack.supervisor import INSTALL_HINT, StackError, Supervisor, find_binary

__all__ = [
    "INSTALL_HINT",
    "LocalStack",
    "Ports",
    "RunFolder",
    "Sample",
    "ScenarioOptions",
    "ScenarioRunner",
    "StackError",
    "Supervisor",
    "Timeline",
    "find_binary",
    "prepare_run_folder",
    "production_version",
    "summarise",
    "write_report",
]
