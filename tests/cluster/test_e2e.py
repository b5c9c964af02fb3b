"""The end-to-end chain tests (``tests/runtime/test_e2e.py``: ``serve`` and ``worker`` as real
processes) on a real 3-master Redis Cluster, the automations over three partitions."""

from __future__ import annotations

from tests.runtime.test_e2e import (
    stack as stack,
)
from tests.runtime.test_e2e import (
    test_completed_flow_runs_the_next_deployment_with_templated_parameters as test_chain,
)
from tests.runtime.test_e2e import (
    test_proactive_automation_pauses_a_stuck_deployment as test_proactive_pause,
)
from tests.runtime.test_e2e import (
    test_three_failures_within_a_minute_send_one_email as test_threshold_email,
)

__all__ = ["stack", "test_chain", "test_proactive_pause", "test_threshold_email"]
