"""schedd: a job scheduler that lives inside systemd."""

__version__ = "0.1.0"

BUS_NAME = "org.schedd.Schedd1"
MANAGER_PATH = "/org/schedd/Schedd1"
MANAGER_IFACE = "org.schedd.Schedd1.Manager"
JOB_IFACE = "org.schedd.Schedd1.Job"
JOB_PATH_PREFIX = "/org/schedd/Schedd1/job/"


def job_path(job_id: int) -> str:
    return f"{JOB_PATH_PREFIX}{job_id}"


UNIT_PREFIX, UNIT_SUFFIX = "schedd-job-", ".scope"


def unit_name(job_id: int) -> str:
    """The transient scope a job runs in (the contract: schedd-job-<id>.scope)."""
    return f"{UNIT_PREFIX}{job_id}{UNIT_SUFFIX}"
