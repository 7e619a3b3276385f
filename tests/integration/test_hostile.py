"""Every method with unknown ids, wrong states and wrong types: precise errors, and the daemon stays up."""

from __future__ import annotations

import pytest

from conftest import Node

METHODS = ("Cancel", "Hold", "Release", "Suspend", "Resume", "Requeue", "GetJob")


def call(node: Node, member: str, sig: str, *body) -> dict:
    (r,) = node.calls([{"member": member, "signature": sig, "body": list(body)}])
    return r


@pytest.fixture
def steady(node: Node):
    before = node.daemon_pid_and_restarts()
    yield node
    assert node.daemon_pid_and_restarts() == before


@pytest.mark.parametrize("member", METHODS)
def test_unknown_ids_are_not_found(steady: Node, member):
    for jid in (999_999, 2**63, 2**64 - 1, 0):
        r = call(steady, member, "t", jid)
        assert r.get("error") == "org.schedd.Schedd1.Error.NotFound" and f"no job {jid}" in r["message"], r


@pytest.mark.parametrize("member", METHODS)
def test_wrong_argument_types_are_invalid_arguments(steady: Node, member):
    for sig, body in (("s", ["7"]), ("i", [-1]), ("", []), ("tt", [1, 2])):
        r = call(steady, member, sig, *body)
        assert r.get("error") == "org.schedd.Schedd1.Error.InvalidArgument", (sig, r)
        assert f"{member} takes (t)" in r["message"]


def test_wrong_states_are_invalid_state(steady: Node):
    node = steady
    done = node.submit(["true"])
    node.wait(done)
    for member, words in (("Cancel", "already COMPLETED"), ("Hold", "only pending jobs can be held"),
                          ("Release", "only held jobs"), ("Suspend", "only running jobs"),
                          ("Resume", "only suspended jobs")):
        r = call(node, member, "t", done)
        assert r.get("error") == "org.schedd.Schedd1.Error.InvalidState" and words in r["message"], (member, r)
    held = node.submit(["true"], Hold=("b", True))
    for member in ("Suspend", "Requeue"):
        assert call(node, member, "t", held).get("error") == "org.schedd.Schedd1.Error.InvalidState"
    assert "ok" in call(node, "Hold", "t", held)  # already held: nothing to do
    node.manager_call("Cancel", "t", str(held))


@pytest.mark.parametrize("flt, words", [
    ({"Bogus": ["u", 1]}, "unknown filter key 'Bogus'"),
    ({"Limit": ["s", "10"]}, "must have D-Bus type 'u'"),
    ({"States": ["as", ["RUNNING", "ASLEEP"]]}, "unknown state 'ASLEEP'"),
    ({"Limit": ["u", 10_001]}, "at most 10000 jobs per call"),
    ({"Properties": ["as", ["State", "Nope\u0007"]]}, "Properties: no job property 'Nope\\x07'; valid: Id, Name,"),
    ({"Properties": ["s", "State"]}, "must have D-Bus type 'as'"),
    ({"Properties": ["as", ["Name"] * 300]}, "Properties: 300 names; at most 256"),
    ({"Properties": ["as", ["", "\n/dev/null", "Id"]]}, "no job property '', '\\n/dev/null'; valid"),
])
def test_list_jobs_rejects_bad_filters(steady: Node, flt, words):
    r = call(steady, "ListJobs", "a{sv}", flt)
    assert r.get("error") == "org.schedd.Schedd1.Error.InvalidArgument" and words in r["message"], r


def test_list_jobs_pages_with_the_after_cursor(steady: Node):
    node = steady
    (r,) = node.calls([{"member": "SubmitMany", "signature": "aa{sv}",
                        "body": [[{"Command": ["as", ["true"]], "Hold": ["b", True]}] * 5]}])
    ids = r["ok"][0]
    page = call(node, "ListJobs", "a{sv}", {"After": ["t", ids[0]], "Limit": ["u", 2], "States": ["as", ["HELD"]]})
    assert [j["Id"] for j in page["ok"][0]] == ids[1:3]
    out = node.calls([{"member": "Cancel", "signature": "t", "body": [i]} for i in ids])
    assert all("ok" in o for o in out)


def test_list_jobs_rows_carry_the_properties_asked_for(steady: Node):
    """Properties: each row has those and Id (the cursor), with the values the full row has."""
    node = steady
    (r,) = node.calls([{"member": "SubmitMany", "signature": "aa{sv}",
                        "body": [[{"Command": ["as", ["true"]], "Hold": ["b", True], "Name": ["s", f"sel{i}"],
                                   "Priority": ["i", i]} for i in range(3)]]}])
    ids = r["ok"][0]
    flt = {"After": ["t", ids[0] - 1], "States": ["as", ["HELD"]]}
    full = call(node, "ListJobs", "a{sv}", flt)["ok"][0]
    some = call(node, "ListJobs", "a{sv}", flt | {"Properties": ["as", ["Priority", "Name", "State", "Name"]]})["ok"][0]
    assert [set(j) for j in some] == [{"Id", "Name", "State", "Priority"}] * len(full)
    assert some == [{k: j[k] for k in ("Id", "Name", "State", "Priority")} for j in full]
    assert [(j["Name"], j["Priority"], j["State"]) for j in some[:3]] == [(f"sel{i}", i, "HELD") for i in range(3)]
    assert call(node, "ListJobs", "a{sv}", flt | {"Properties": ["as", []]})["ok"][0] == [{"Id": j["Id"]} for j in full]
    node.calls([{"member": "Cancel", "signature": "t", "body": [i]} for i in ids])


def test_submit_many_is_all_or_nothing(steady: Node):
    node = steady
    before = call(node, "ListJobs", "a{sv}", {})["ok"][0]
    r = call(node, "SubmitMany", "aa{sv}", [{"Command": ["as", ["true"]]}, {"Command": ["as", ["true"]]},
                                           {"CPUs": ["u", 0], "Command": ["as", ["true"]]}])
    assert r["error"] == "org.schedd.Schedd1.Error.InvalidArgument" and r["message"].startswith("spec 2: CPUs")
    assert call(node, "ListJobs", "a{sv}", {})["ok"][0] == before
    assert call(node, "SubmitMany", "aa{sv}", [])["error"].endswith("InvalidArgument")
