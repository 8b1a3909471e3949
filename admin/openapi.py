"""The admin API's OpenAPI 3.0 description, served at /openapi.json and checked by schemathesis."""

from __future__ import annotations

from typing import Any

ERROR = {"type": "object", "required": ["error", "detail"],
         "properties": {"error": {"type": "string"}, "detail": {"type": "string"}}}
WEIGHTS = {"type": "object", "required": ["original", "new"],
           "properties": {"original": {"type": "number", "minimum": 0, "maximum": 100},
                          "new": {"type": "number", "minimum": 0, "maximum": 100}}}
EVENT = {"type": "object", "required": ["time", "kind", "from", "to", "reason", "actor"],
         "properties": {"time": {"type": "number"}, "kind": {"type": "string"},
                        "from": {"type": "string"}, "to": {"type": "string"},
                        "reason": {"type": "string"}, "actor": {"type": "string"},
                        "evidence": {"type": "object"}}}
STATS = {"type": "object", "required": ["requests", "errors", "error_rate", "p50", "p99"],
         "properties": {k: {"type": "number"} for k in
                        ("requests", "errors", "error_rate", "min", "mean", "p50", "p90", "p99",
                         "p999", "max")}}
ROLLOUT = {"type": "object", "nullable": True,
           "required": ["name", "status", "phase", "gates", "phases"],
           "properties": {"name": {"type": "string"}, "status": {"type": "string"},
                          "phase": {"type": "object"}, "verdict": {"type": "string"},
                          "gates": {"type": "array", "items": {"type": "object"}},
                          "phases": {"type": "array", "items": {"type": "object"}},
                          "deny_users": {"type": "array", "items": {"type": "string"}},
                          "weight": {"type": "number", "description": "percent on new now"},
                          "stopped": {
                              "type": "object", "nullable": True,
                              "description": "what a rollback or abort stopped (null while "
                                             "the plan runs); the phase clock stops then",
                              "properties": {"kind": {"type": "string"},
                                             "phase": {"type": "integer"},
                                             "phase_name": {"type": "string"},
                                             "weight": {"type": "number"},
                                             "time": {"type": "number"},
                                             "elapsed_s": {"type": "number"},
                                             "reason": {"type": "string"},
                                             "actor": {"type": "string"}}}}}
ENDPOINTS = {"type": "array", "items": {
    "type": "object", "required": ["variant", "endpoint", "healthy"],
    "properties": {"variant": {"type": "string"}, "endpoint": {"type": "string"},
                   "healthy": {"type": "boolean"}, "outstanding": {"type": "integer"},
                   "ejections": {"type": "integer"},
                   "active": {"type": "object", "description": "active health checks: down, "
                              "last (what the last probe saw), streak"}}}}
BUILD = {"type": "object", "required": ["kind", "compiled", "modules", "python"],
         "description": "which build of the hot path runs: mypyc (all compiled), pure or "
                        "partial",
         "properties": {"kind": {"type": "string", "enum": ["mypyc", "pure", "partial"]},
                        "compiled": {"type": "integer"}, "modules": {"type": "integer"},
                        "python": {"type": "string"}}}
SHADOW_VIEW = {"type": "object", "description": "mirrored traffic (present when mirroring)",
               "required": ["mirror", "requests_total", "mismatches_total", "dropped_total"],
               "properties": {"mirror": {"type": "number"},
                              "requests_total": {"type": "integer"},
                              "mismatches_total": {"type": "integer"},
                              "agreement": {"type": "number", "nullable": True},
                              "dropped_total": {"type": "integer"},
                              "in_flight": {"type": "integer"},
                              "since_phase": {"type": "object"}}}
MUTATION_RESULT = {"type": "object", "required": ["events", "weights"],
                   "properties": {"events": {"type": "array", "items": EVENT},
                                  "weights": WEIGHTS, "status": ROLLOUT}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): {"description": "error", "content": {"application/json": {"schema": ERROR}}}
            for c in codes}


def _ok(schema: dict[str, Any], description: str = "ok") -> dict[str, Any]:
    return {"200": {"description": description,
                    "content": {"application/json": {"schema": schema}}}}


def _mutation(summary: str, body: dict[str, Any] | None, *codes: int) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "security": [{"bearer": []}],
                          "responses": {**_ok(MUTATION_RESULT),
                                        **_errors(400, 401, 409, 413, 415, 422, *codes)}}
    if body is not None:
        op["requestBody"] = {"required": False,
                             "content": {"application/json": {"schema": body}}}
    return op


REASON = {"type": "object", "additionalProperties": False,
          "properties": {"reason": {"type": "string", "maxLength": 500}}}

NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
INGESTED = {"type": "object", "required": ["accepted", "rejected"],
            "properties": {"accepted": {"type": "integer"}, "rejected": {"type": "integer"},
                           "errors": {"type": "array", "items": {"type": "string"}}}}
RESULTS = {"type": "object", "required": ["name", "variants", "srm", "metrics", "decision"],
           "properties": {"name": {"type": "string"}, "variants": {"type": "object"},
                          "srm": {"type": "object", "required": ["p_value", "mismatch"]},
                          "metrics": {"type": "object"}, "decision": {"type": "object"}}}

SPEC: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "veer admin API", "version": "1.0.0",
             "description": "Operate a veer rollout: weights, actions, events, analysis."},
    "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    "paths": {
        "/status": {"get": {"summary": "Rollout, weights and per-variant numbers",
                            "responses": _ok({"type": "object",
                                              "required": ["weights", "variants", "rollout"],
                                              "properties": {"weights": WEIGHTS,
                                                             "rollout": ROLLOUT,
                                                             "variants": {"type": "object"},
                                                             "endpoints": ENDPOINTS,
                                                             "shadow": SHADOW_VIEW,
                                                             "build": BUILD}})}},
        "/weights": {
            "get": {"summary": "Current weights (percent)", "responses": _ok(WEIGHTS)},
            "put": _mutation("Set weights by hand (pauses a running plan)", {
                "type": "object", "additionalProperties": False, "minProperties": 1,
                "properties": {"new": {"type": "number", "minimum": 0, "maximum": 100},
                               "original": {"type": "number", "minimum": 0, "maximum": 100}}}),
        },
        "/events": {"get": {
            "summary": "Events, newest first",
            "parameters": [
                {"name": "kind", "in": "query", "schema": {"type": "string"}},
                {"name": "actor", "in": "query", "schema": {"type": "string"}},
                {"name": "since", "in": "query", "schema": {"type": "number"}},
                {"name": "limit", "in": "query",
                 "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
                {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
            ],
            "responses": {**_ok({"type": "object", "required": ["events", "total"],
                                 "properties": {"events": {"type": "array", "items": EVENT},
                                                "total": {"type": "integer"},
                                                "next_offset": {"type": "integer",
                                                                "nullable": True}}}),
                          **_errors(400)}}},
        "/analysis": {"get": {"summary": "Both variants side by side since the phase began",
                              "responses": _ok({"type": "object",
                                                "required": ["variants", "mann_whitney",
                                                             "verdict"],
                                                "properties": {
                                                    "variants": {"type": "object",
                                                                 "additionalProperties": STATS},
                                                    "mann_whitney": {"type": "object"},
                                                    "gates": {"type": "array"},
                                                    "verdict": {"type": "string"}}})}},
        "/rollout/rollback": {"post": _mutation("Roll back: immediate, gradual or targeted", {
            "type": "object", "additionalProperties": False,
            "properties": {"reason": {"type": "string", "maxLength": 500},
                           "mode": {"type": "string",
                                    "enum": ["immediate", "gradual", "targeted"]},
                           "stages": {"type": "array",
                                      "items": {"type": "number", "minimum": 0, "maximum": 1}},
                           "interval": {"type": "string"},
                           "users": {"type": "array", "items": {"type": "string"}}}})},
        **{f"/rollout/{action}": {"post": _mutation(f"Rollout action: {action}", REASON)}
           for action in ("advance", "approve", "promote", "pause", "resume", "abort")},
        "/rollout/retry": {"post": _mutation(
            "After a rollback or abort: the plan again from phase 0 at its weight, status "
            "progressing (409 from any other status)", REASON)},
        "/reload": {"post": {
            "summary": "Re-read the config file (a bad one is refused, the old config kept)",
            "security": [{"bearer": []}],
            "responses": {**_ok({"type": "object", "required": ["reloaded", "changed"],
                                 "properties": {"reloaded": {"type": "boolean"},
                                                "changed": {"type": "array",
                                                            "items": {"type": "string"}},
                                                "config": {"type": "string"}}}),
                          **_errors(400, 401, 409, 413, 415, 422)}}},
        "/experiments": {"get": {"summary": "Configured experiments with split and decision",
                                 "responses": _ok({"type": "object",
                                                   "required": ["experiments"],
                                                   "properties": {"experiments": {
                                                       "type": "array",
                                                       "items": {"type": "object"}}}})}},
        "/experiments/{name}/results": {"get": {
            "summary": "Per-user results: units, SRM, per metric n/mean, difference, "
                       "always-valid ci, fixed-horizon p_value, lift, decision",
            "parameters": [NAME, {"name": "history", "in": "query", "required": False,
                                  "schema": {"type": "string",
                                             "enum": ["true", "false", "1", "0"]}}],
            "responses": {**_ok(RESULTS), **_errors(400, 404)}}},
        "/experiments/{name}/events": {"post": {
            "summary": "Outcome events, each attributed to the variant that served its user",
            "security": [{"bearer": []}], "parameters": [NAME],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": False, "required": ["events"],
                "properties": {"events": {"type": "array", "maxItems": 10000, "items": {
                    "type": "object", "additionalProperties": False,
                    "required": ["user", "metric", "value"],
                    "properties": {"user": {"type": "string", "minLength": 1,
                                            "maxLength": 256},
                                   "metric": {"type": "string"},
                                   "value": {"type": "number"}}}}}}}}},
            "responses": {**_ok(INGESTED, "every event accepted"),
                          "202": {"description": "some events rejected",
                                  "content": {"application/json": {"schema": INGESTED}}},
                          **_errors(400, 401, 404, 413, 415, 422)}}},
        "/healthz": {"get": {"summary": "Liveness", "responses": _ok({"type": "object"})}},
        "/readyz": {"get": {"summary": "Readiness",
                            "responses": {**_ok({"type": "object"}),
                                          "503": {"description": "not ready",
                                                  "content": {"application/json": {
                                                      "schema": {"type": "object"}}}}}}},
        "/metrics": {"get": {"summary": "Prometheus metrics",
                             "responses": {"200": {"description": "text exposition",
                                                   "content": {"text/plain": {
                                                       "schema": {"type": "string"}}}}}}},
    },
}
