"""Job ids are made and read in jobs.queueing only: each kind reads back, and never as the other."""

from __future__ import annotations

from redis import Redis
from rq import Queue

from jobs.queueing import (
    PLAN,
    RETRY_MAILS,
    RUN_CHUNK,
    delivery_job_id,
    delivery_of_job,
    job_id,
    task_of_job,
)


def queue() -> Queue:
    return Queue("reset:work", connection=Redis())  # never connects: ids only


def test_a_reset_job_id_reads_back_as_its_task_and_kind() -> None:
    ids = {kind: job_id(queue(), function, 42) for function, kind in
           ((PLAN, "plan"), (RUN_CHUNK, "chunk"), (RETRY_MAILS, "retry"))}

    assert {kind: task_of_job(made) for kind, made in ids.items()} == {
        "plan": (42, "plan"), "chunk": (42, "chunk"), "retry": (42, "retry"),
    }
    assert all(made.startswith("reset_work__t42__") for made in ids.values())
    assert [delivery_of_job(made) for made in ids.values()] == [None, None, None]


def test_a_delivery_id_reads_back_and_is_not_counted_as_reset_work() -> None:
    made = delivery_job_id(queue(), 42, "finished")

    assert delivery_of_job(made) == (42, "finished")
    assert delivery_of_job(f"rq:job:{made}") == (42, "finished")  # as a registry entry
    assert task_of_job(made) is None
    assert made != delivery_job_id(queue(), 42, "finished")
