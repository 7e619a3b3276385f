"""The peer API's OpenAPI 3 document, served at /api/v1/openapi.json (schedd.cluster.api)."""

from __future__ import annotations

from typing import Any

from schedd.cluster.wire import ACTIONS, API, FORWARD_SPEC_KEYS, LOAD_KEYS
from schedd.core.model import JobState
from schedd.protocol import JOB_PROPERTIES


def _schema_for(sig: str) -> dict[str, Any]:
    return {"as": {"type": "array", "items": {"type": "string"}}, "at": {"type": "array", "items": {"type": "integer"}},
            "au": {"type": "array", "items": {"type": "integer"}}, "s": {"type": "string"},
            "b": {"type": "boolean"}}.get(sig, {"type": "integer"})


_ERR = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_JSON = lambda ref, desc="ok": {"description": desc, "content": {"application/json": {"schema": {"$ref": ref}}}}  # noqa: E731
_ERRORS = {"400": _ERR, "401": _ERR, "403": _ERR, "404": _ERR, "409": _ERR, "422": _ERR}
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "schedd peer API", "version": "1",
             "description": "Federation between schedd nodes: heartbeats, forwarded jobs, state mirroring. Every "
                            "operation but this document needs `Authorization: Bearer <token>` (http.token_file)."},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {"type": "object", "required": ["error", "message"],
                      "properties": {"error": {"type": "string"}, "message": {"type": "string"},
                                     "dbus_error": {"type": "string"}}},
            "Heartbeat": {"type": "object", "required": ["Name", *LOAD_KEYS],
                          "properties": {"Name": {"type": "string"}, "URL": {"type": "string"},
                                         **{k: {"type": "integer", "minimum": 0} for k in LOAD_KEYS},
                                         "Digest": {"type": "string", "description": "of the sender's member list"},
                                         "Drain": {"type": "string", "enum": ["draining", "drained"]},
                                         "DrainReason": {"type": "string"}, "DrainedBy": {"type": "string"},
                                         "Features": {"type": "array", "maxItems": 32,
                                                      "items": {"type": "string", "minLength": 1, "maxLength": 64},
                                                      "description": "what the node runs beyond plain commands: "
                                                                     "\"container\" (Container jobs)"}}},
            "Members": {"type": "object", "properties": {
                "Name": {"type": "string"},
                "Members": {"type": "array", "items": {"type": "object", "properties": {
                    "Name": {"type": "string"}, "URL": {"type": "string"}}}},
                "Removed": {"type": "array", "items": {"type": "string"}}}},
            "Spec": {"type": "object", "required": ["Command", "UserName"], "additionalProperties": False,
                     "properties": {"UserName": {"type": "string"},
                                    **{k: _schema_for(s) for k, s in FORWARD_SPEC_KEYS.items()}}},
            "Forward": {"type": "object", "required": ["Origin", "OriginId", "Spec"], "additionalProperties": False,
                        "properties": {"Origin": {"type": "string"}, "OriginId": {"type": "integer", "minimum": 1},
                                       "Attempt": {"type": "integer", "minimum": 1, "default": 1,
                                                   "description": "the origin's forward of this job it is (a "
                                                                  "retry repeats it; a new one makes a new copy)"},
                                       "Spec": {"$ref": "#/components/schemas/Spec"}}},
            "Job": {"type": "object", "properties": {**{k: _schema_for(s) for k, s in JOB_PROPERTIES.items()},
                                                     "OriginNode": {"type": "string"},
                                                     "OriginId": {"type": "integer"}}},
            "JobState": {"type": "object", "required": ["Id", "OriginId", "State", "Reason", "ExitCode", "StartTime",
                                                        "EndTime", "CPUTimeUSec", "MemoryPeak", "AssignedCPUs",
                                                        "AssignedGPUs", "StdoutPath", "StderrPath"],
                         "properties": {"Id": {"type": "integer"}, "OriginNode": {"type": "string"},
                                        "OriginId": {"type": "integer"}, "Attempt": {"type": "integer"},
                                        "Node": {"type": "string"},
                                        "State": {"type": "string", "enum": list(JobState)},
                                        "Reason": {"type": "string"}, "ExitCode": {"type": "integer"},
                                        "StartTime": {"type": "integer"}, "EndTime": {"type": "integer"},
                                        "CPUTimeUSec": {"type": "integer"}, "MemoryPeak": {"type": "integer"},
                                        "AssignedCPUs": {"type": "array", "items": {"type": "integer"}},
                                        "AssignedGPUs": {"type": "array", "items": {"type": "integer"}},
                                        "StdoutPath": {"type": "string"}, "StderrPath": {"type": "string"},
                                        "Restarts": {"type": "integer"}}},
            "Mirror": {"type": "object", "required": ["Node", "Jobs"],
                       "properties": {"Node": {"type": "string"},
                                      "Jobs": {"type": "array", "items": {"$ref": "#/components/schemas/JobState"}}}},
        },
    },
    "security": [{"bearer": []}],
    "paths": {
        f"{API}/openapi.json": {"get": {"summary": "this document", "security": [],
                                        "responses": {"200": {"description": "OpenAPI 3 document"}}}},
        f"{API}/heartbeat": {"post": {
            "summary": "a peer's capacity and load; marks it up",
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Heartbeat"}}}},
            "responses": {"200": {"description": "heard"}, **_ERRORS}}},
        f"{API}/join": {"post": {
            "summary": "a node announces itself (Name, URL, capacity: a Heartbeat) and learns the members; 409 "
                       "when the name is this node's or a live member's at another URL",
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Heartbeat"}}}},
            "responses": {"200": _JSON("#/components/schemas/Members", "the members"), **_ERRORS}}},
        f"{API}/leave": {"post": {
            "summary": "a peer shuts down ({Name}): down at once, its queued copies placed again",
            "responses": {"200": {"description": "heard"}, **_ERRORS}}},
        f"{API}/nodes/{{name}}/{{action}}": {"post": {
            "summary": "drain or resume this node ({Reason, By, Node: the asking node}; By is shown with that node's "
                       "name), or forget node `name` a member removed ({Node})",
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                           {"name": "action", "in": "path", "required": True,
                            "schema": {"type": "string", "enum": ["drain", "resume", "remove"]}}],
            "responses": {"200": {"description": "done"}, **_ERRORS}}},
        f"{API}/nodes": {"get": {"summary": "this node and its peers (ListNodes keys)",
                                 "responses": {"200": {"description": "{Nodes: [...]}"}, **_ERRORS}}},
        f"{API}/jobs": {
            "post": {"summary": "run a peer's job here; a retry with the same (Origin, OriginId, Attempt) returns the "
                             "first copy",
                     "requestBody": {"required": True, "content": {"application/json": {
                         "schema": {"$ref": "#/components/schemas/Forward"}}}},
                     "responses": {"201": _JSON("#/components/schemas/Job", "the job here (new or the existing copy)"),
                                   **_ERRORS}},
            "get": {"summary": "jobs of this node; origin=NODE: this node's copies of NODE's jobs (states only)",
                    "parameters": [{"name": n, "in": "query", "schema": {"type": t}} for n, t in (
                        ("origin", "string"), ("own", "string"), ("states", "string"), ("user", "string"),
                        ("after", "integer"), ("limit", "integer"))],
                    "responses": {"200": {"description": "{Jobs: [...]}"}, **_ERRORS}}},
        f"{API}/jobs/{{id}}": {"get": {"summary": "one job", "parameters": [_ID],
                                       "responses": {"200": _JSON("#/components/schemas/Job"), **_ERRORS}}},
        f"{API}/jobs/{{id}}/{{action}}": {"post": {
            "summary": "cancel, hold, release, suspend, resume, requeue or fence (stop a stale copy) a forwarded job",
            "parameters": [_ID, {"name": "action", "in": "path", "required": True,
                                 "schema": {"type": "string", "enum": list(ACTIONS)}}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["Origin"], "properties": {
                    "Origin": {"type": "string"},
                    "Failed": {"type": "boolean", "default": False,
                               "description": "fence: the origin counts this run as failed (Requeue=false on a "
                                              "node judged down): the copy ends FAILED, else CANCELLED"}}}}}},
            "responses": {"200": _JSON("#/components/schemas/JobState", "the job's state after it"), **_ERRORS}}},
        f"{API}/jobs/{{id}}/output": {"get": {
            "summary": "bytes of a job's output from offset (at most 1 MiB)",
            "parameters": [_ID] + [{"name": n, "in": "query", "schema": s} for n, s in (
                ("stream", {"type": "string", "enum": ["stdout", "stderr"]}), ("offset", {"type": "integer"}),
                ("limit", {"type": "integer"}))] + [
                {"name": "origin", "in": "query", "required": True, "schema": {"type": "string"},
                 "description": "the node asking: only jobs it forwarded here are read"}],
            "responses": {"200": {"description": "output bytes",
                                  "content": {"application/octet-stream": {}}}, **_ERRORS}}},
        f"{API}/mirror": {"post": {
            "summary": "states of the origin's jobs that this peer runs; answers which copies are stale",
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Mirror"}}}},
            "responses": {"200": {"description": "{Stale: [ids]}: stop these copies"}, **_ERRORS}}},
        f"{API}/starts": {"post": {
            "summary": "the run node asks its origin to grant the start of these copies (no copy starts without)",
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Mirror"}}}},
            "responses": {"200": {"description": "{Granted: [ids]: start these, Stale: [ids]: stop these}; "
                                                 "the rest ask again later"}, **_ERRORS}}},
    },
}
