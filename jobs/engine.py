"""The reset engine's RQ jobs: plan a task, run its chunks, retry mails, finish."""

from __future__ import annotations


def plan_task(task_id: int) -> None:
    raise NotImplementedError


def run_chunk(task_id: int, chunk: int) -> None:
    raise NotImplementedError


def retry_mails(task_id: int, item_ids: list[int]) -> None:
    raise NotImplementedError
