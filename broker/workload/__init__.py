"""Jobs without secrets: trust rules for platform identities and the validation of their tokens.

`trusts` is the service namespace every surface calls (`trusts.add_trust`, …); `admit_subject`
is the token exchange's identification of a job by its workload JWT.
"""

from broker.workload import trusts
from broker.workload.service import REJECTED, admit_subject
from broker.workload.verify import TOKEN_TYPES, Match, Rule, check_claims, claim_at, scalar_text

__all__ = ["REJECTED", "TOKEN_TYPES", "Match", "Rule", "admit_subject", "check_claims",
           "claim_at", "scalar_text", "trusts"]
