"""Whether a refusal (401/403, in any envelope) is about the run or about one item (SPEC §1a).

The key refused, the quota gone, an access list that shuts us out: every call is refused, and the run stops
(exit 3). A web application firewall refusing one prompt, a gateway's page for one request: the calls for
other items keep succeeding, and only that item fails. One `Refusals` per kind of call (createTask, recordInfo):
status queries that keep succeeding say nothing of whether the account may still create. Before anything was
accepted a first refusal proves nothing either way: the Submitter holds that item until the next create decides.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ServiceError

REFUSED_IN_A_ROW = 3  # refusals with no success between them: the run, not one item, is refused
ACCOUNT_CODES = ("insufficient_user_quota",)  # the service says outright that the account is out


@dataclass(slots=True)
class Refusals:
    accepted: int = 0  # successful JSON answers of this kind of call, this run
    in_a_row: int = 0  # refusals since the last success

    def on_success(self) -> None:
        self.accepted += 1
        self.in_a_row = 0

    def item_only(self, exc: ServiceError) -> bool:
        """Count a refusal; whether it concerns its item only (True) or the whole run (False)."""
        self.in_a_row += 1
        if exc.code in ACCOUNT_CODES:
            return False
        return self.accepted > 0 and self.in_a_row < REFUSED_IN_A_ROW
