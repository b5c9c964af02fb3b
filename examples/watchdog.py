"""A proactive automation defined in Python (``automations apply examples/watchdog.py``).

3. Watchdog: an `extract` run that starts but does not complete within 10 minutes pauses the
   `extract-hourly` schedule, so a stuck source does not pile up runs.
"""

from datetime import timedelta

from actions import PauseDeployment
from automations import Automation
from triggers import EventTrigger, Posture

extract_watchdog = Automation(
    name="extract-watchdog",
    description="Pause the hourly extract when a run does not complete within 10 minutes.",
    trigger=EventTrigger(
        after={"prefect.flow-run.Running"},
        expect={"prefect.flow-run.Completed"},
        match_related={"prefect.resource.role": "flow", "prefect.resource.name": "extract"},
        for_each={"prefect.resource.id"},
        posture=Posture.Proactive,
        threshold=1,
        within=timedelta(minutes=10),
    ),
    actions=[PauseDeployment(deployment="extract-hourly")],
)
