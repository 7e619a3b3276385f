"""The D-Bus adapter's reading of engine changes: Job fields and manager facts -> property names."""

from schedd.api.dbus.changes import JOB_PROPERTIES_OF, job_properties, manager_properties
from schedd.api.dbus.service import MANAGER_SIGNATURES
from schedd.core.engine.events import COUNTS, END_FIELDS, JOB_FIELDS, MANAGER_FACTS, RESOURCES, RUN_FIELDS, START_FIELDS, TRANSITION
from schedd.protocol import JOB_PROPERTIES


def test_a_field_names_every_property_computed_from_it():
    assert job_properties({"start_time"}) == {"StartTime", "WaitUSec"}
    assert job_properties({"end_time"}) == {"EndTime", "RunUSec"}
    assert job_properties({"suspend_time"}) == job_properties({"suspended_usec"}) == {"SuspendedUSec"}
    assert job_properties({"spec.stdout_path", "state"}) == {"StdoutPath", "State"}


def test_fields_without_a_property_change_none():
    assert job_properties({"handle", "remote_id", "node_failures", "spec.hold"}) == set()


def test_the_transitions_vocabularies_read_as_before():
    """The sets the engine once spelled as property names (_START_PROPS, _END_PROPS) follow from its fields."""
    assert job_properties(TRANSITION | START_FIELDS) == {
        "State", "Reason", "StartTime", "AssignedCPUs", "AssignedGPUs", "Node", "WaitUSec"}
    assert job_properties(TRANSITION | END_FIELDS) == {
        "State", "Reason", "ExitCode", "EndTime", "CPUTimeUSec", "MemoryPeak", "RunUSec"}
    assert job_properties(RUN_FIELDS) >= {"StartTime", "WaitUSec", "EndTime", "RunUSec", "SuspendedUSec"}


def test_every_property_that_can_change_has_a_field():
    mapped = {p for props in JOB_PROPERTIES_OF.values() for p in props}
    assert mapped | {"Id", "Unit"} == set(JOB_PROPERTIES)  # the id, and the unit named by it, never change
    assert JOB_PROPERTIES_OF.keys() <= JOB_FIELDS


def test_manager_facts():
    assert manager_properties({COUNTS}) == {"PendingJobs", "RunningJobs"}
    assert manager_properties({RESOURCES}) == {"AvailableCPUs", "AvailableMemory", "AvailableGPUs"}
    assert manager_properties(MANAGER_FACTS) == set(MANAGER_SIGNATURES)
