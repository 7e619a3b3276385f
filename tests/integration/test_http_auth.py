"""HTTP credentials on a real daemon: the peers' token works the peer API only, the operators' token
works the dashboard, and a peer's forward never runs a job for a system account or a member of a
privileged group (shared/DESIGN.md "HTTP credentials"; README "Security")."""

from __future__ import annotations

import json

from conftest import PEER_DENY_EXTRA, USERS, WebNode

ALICE, BOB = USERS


def test_the_peer_token_cannot_act_on_the_dashboard_the_operators_token_can(web_node: WebNode):
    jid = web_node.submit(["sleep", "60"], user=ALICE)
    web_node.wait(jid, {"RUNNING"})
    for token, status, error in ((web_node.token, 403, "peer-token"), (None, 401, "unauthorized"),
                                 ("wrong-token-0123456789abcdef", 401, "unauthorized")):
        for action in ("cancel", "hold"):
            code, body, _ = web_node.http(f"/ui/jobs/{jid}/{action}", method="POST", token=token)
            assert code == status and json.loads(body)["error"] == error, (token, action, code, body)
    assert web_node.job(jid)["State"] == "RUNNING"
    # Nor does it show the command line or the output.
    code, body, _ = web_node.http(f"/ui/jobs/{jid}", token=web_node.token)
    shown = json.loads(body)
    assert code == 200 and "Command" not in shown and shown["Output"] is None
    code, body, _ = web_node.http(f"/ui/jobs/{jid}/cancel", method="POST", token=web_node.admin_token)
    assert code == 200 and json.loads(body)["state"] == "CANCELLED", body
    assert web_node.job(jid)["State"] == "CANCELLED"


def test_the_dashboard_answers_only_to_its_own_host_names(web_node: WebNode):
    import http.client

    for host, status in (("127.0.0.1", 200), ("localhost", 200), ("testnode", 200), ("rebound.example", 421)):
        conn = http.client.HTTPConnection("127.0.0.1", web_node.port, timeout=10)
        try:
            conn.request("GET", "/ui/state", headers={"Host": f"{host}:{web_node.port}"})
            r = conn.getresponse()
            body = r.read()
        finally:
            conn.close()
        assert r.status == status, (host, r.status, body)
        if status != 200:
            assert json.loads(body)["error"] == "misdirected-request"


def forward(origin_id: int, user: str) -> dict:
    return {"Origin": "ghost", "OriginId": origin_id,
            "Spec": {"Command": ["true"], "UserName": user, "Hold": True, "WorkingDirectory": "/"}}


def local_jobs(node: WebNode) -> list[int]:
    r = node.manager_call("ListJobs", "a{sv}", "0")
    return [row["Id"]["data"] for row in json.loads(r.stdout)["data"][0]]


def test_forwards_for_system_accounts_and_privileged_groups_are_refused(peer_node: WebNode):
    before = local_jobs(peer_node)
    for oid, user, words in ((1, "daemon", "is uid 1, a system account"), (2, "root", "root"),
                             (3, ALICE, PEER_DENY_EXTRA)):
        code, body, _ = peer_node.http("/api/v1/jobs", method="POST", token=peer_node.token, body=forward(oid, user))
        answer = json.loads(body)
        assert code == 403, (user, code, answer)
        assert answer["dbus_error"] == "org.schedd.Schedd1.Error.AccessDenied" and words in answer["message"], answer
    assert local_jobs(peer_node) == before  # nothing created
    # An ordinary account (on this node's terms) is run; the operators' token is no peer credential.
    code, body, _ = peer_node.http("/api/v1/jobs", method="POST", token=peer_node.admin_token, body=forward(4, BOB))
    assert code == 401, body
    code, body, _ = peer_node.http("/api/v1/jobs", method="POST", token=peer_node.token, body=forward(4, BOB))
    assert code == 201, body
    copy = json.loads(body)
    assert copy["UserName"] == BOB and copy["OriginNode"] == "ghost"
    # Its output is read only for the origin that forwarded it.
    code, body, _ = peer_node.http(f"/api/v1/jobs/{copy['Id']}/output", token=peer_node.token)
    assert code == 400 and "origin" in json.loads(body)["message"]
    code, _, _ = peer_node.http(f"/api/v1/jobs/{copy['Id']}/output?origin=ghost", token=peer_node.token)
    assert code == 200
    mine = peer_node.submit(["true"], user=BOB, Hold=("b", True))
    code, body, _ = peer_node.http(f"/api/v1/jobs/{mine}/output?origin=ghost", token=peer_node.token)
    assert code == 403, body
    for jid in (copy["Id"], mine):
        peer_node.manager_call("Cancel", "t", str(jid))
