"""The approval link, Go's REST route: ``POST /runs/{run_id}/approval/{step_id}?action=
approve|reject&token=TOKEN`` (the token is in the step's ``approval.requested`` event and
its notification). An optional JSON body is the decision as it is recorded (the step's
output when granted, its error when rejected); ``by`` in it names who decides for steps with
``approvers``. Answers as Go: 200 ``{"run_id", "status": "approved"|"rejected", "step"}``,
400 bad action or no token, 401 wrong or unknown token, 403 not an approver, 409 decided
by someone else meanwhile."""

from __future__ import annotations

from typing import Any

from dagnats_nb.adapters.http.server import BodyError, Request, Route, read_json
from dagnats_nb.runtime.gates import ApprovalError, decide

MAX_BODY = 1 << 20


class Approvals:
    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def routes(self) -> dict:
        return {("POST", "/runs/{run_id}/approval/{step_id}"): Route(self.decide, MAX_BODY)}

    async def decide(self, request: Request) -> tuple[int, dict[str, Any]]:
        action = request.query.get("action", "")
        token = request.query.get("token", "")
        if action not in ("approve", "reject"):
            return 400, {"error": f"action must be approve or reject, got {action!r}"}
        if not token:
            return 400, {"error": "token is required (?token=...: see approval.requested)"}
        body = None
        if request.body.strip():
            try:
                body = read_json(
                    request.body, "approval body", 'send a JSON object, e.g. {"by": ...}'
                )
            except BodyError as exc:
                return 400, {"error": str(exc)}
        by = body.get("by") if isinstance(body, dict) else None
        run_id, step_id = request.params["run_id"], request.params["step_id"]
        try:
            await decide(
                self.engine._js,
                run_id,
                step_id,
                approve=action == "approve",
                by=by,
                token=token,
                body=body,
            )
        except ApprovalError as exc:
            return exc.status, {"error": str(exc)}
        status = "approved" if action == "approve" else "rejected"
        return 200, {"run_id": run_id, "status": status, "step": step_id}
