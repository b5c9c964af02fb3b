"""Publishing events on the cluster: the async and sync publishers, their trims (a script
keyed by the stream) and back-pressure, and an unreachable cluster: the single-Redis suite's
tests, unchanged, on the cluster client."""

from __future__ import annotations

from tests.automations.test_backpressure import bounded as bounded
from tests.automations.test_backpressure import (
    test_a_publisher_far_ahead_of_the_engine_waits_then_fails_keeping_its_events as test_a_publisher_far_ahead_of_the_engine_waits_then_fails_keeping_its_events,  # noqa: E501
)
from tests.automations.test_backpressure import (
    test_publishing_within_the_bound_never_waits as test_publishing_within_the_bound_never_waits,
)
from tests.automations.test_publish import (
    test_aemit_many_keeps_order_ids_and_times_across_chunks as test_aemit_many_keeps_order_ids_and_times_across_chunks,  # noqa: E501
)
from tests.automations.test_publish import (
    test_aemit_publishes_the_event_json_and_its_id as test_aemit_publishes_the_event_json_and_its_id,  # noqa: E501
)
from tests.automations.test_publish import (
    test_an_invalid_event_in_a_batch_publishes_nothing as test_an_invalid_event_in_a_batch_publishes_nothing,  # noqa: E501
)
from tests.automations.test_publish import (
    test_publisher_trims_only_acknowledged_entries as test_publisher_trims_only_acknowledged_entries,  # noqa: E501
)
from tests.automations.test_publish import (
    test_unreachable_redis_raises_bus_unavailable_without_the_password as test_unreachable_redis_raises_bus_unavailable_without_the_password,  # noqa: E501
)
