"""Durable background jobs (ingest, later conversion and analysis), kept in the metadata DB."""

from khazna.jobs.queue import Job, JobQueue, PermanentFailure
from khazna.jobs.runner import JobRunner

__all__ = ["Job", "JobQueue", "JobRunner", "PermanentFailure"]
