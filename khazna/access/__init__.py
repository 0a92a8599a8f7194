"""Who is calling and what they may do."""

from khazna.access.accounts import ANONYMOUS, Accounts, Principal
from khazna.access.policy import LEVELS, ORG_ROLES, AccessPolicy

__all__ = ["ANONYMOUS", "LEVELS", "ORG_ROLES", "AccessPolicy", "Accounts", "Principal"]
