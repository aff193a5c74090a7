"""``passthrough``: no compression. The baseline, and what bypassed requests use."""

from __future__ import annotations

from ._base import Job, MethodOutput


class Passthrough:
    name = "passthrough"
    model_id = None

    def run(self, job: Job) -> MethodOutput:
        return MethodOutput(texts=[d.text for d in job.docs])
