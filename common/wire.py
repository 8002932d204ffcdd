"""What travels between the server and the sites besides the weights: config keys and reply
codes. Flower-free, so that both sides (and tests) name them from one place."""

from __future__ import annotations

from enum import IntEnum

# Config-record key the server adds next to the run config: the run directory's name, so a site
# keeps one privacy ledger per run, across a resume.
RUN_KEY = "fedclinic-run"

# Config-record key of a simulation's site policy (TOML text, `fedclinic simulate --site-policy`).
# Only simulated sites read it; a deployed site never trusts a policy the server sends.
SITE_POLICY_KEY = "site-policy"

# Config-record key of a simulation's folder for the simulated sites' personal parameters
# (--personalize local-norm), so the simulator can score them. Only simulated sites read it; a
# deployed site keeps them in its own state folder and never writes where the server says.
PERSONAL_DIR_KEY = "personal-dir"

# Keys in a site's config record that are not RunConfig fields: Flower strategies add the first
# two, the server the run key, a simulation the site policy and the personal folder.
EXTRA_CONFIG_KEYS = ("server-round", "proximal-mu", RUN_KEY, SITE_POLICY_KEY, PERSONAL_DIR_KEY)

# Human text a budget refusal's reason starts with (the code, not this text, is what the server
# reads).
BUDGET_EXHAUSTED_REASON = "budget-exhausted"

# ... and a refusal by the site's own policy: "policy-refused: <rule>: <why>".
POLICY_REFUSED_REASON = "policy-refused"


class ReplyCode(IntEnum):
    """Error codes of a site's error replies (Flower `Error.code`); the reason is the text."""

    BUDGET_EXHAUSTED = 4030   # the site refused the round: it would spend past its budget
    APP_REFUSED = 4031        # the task's app bundle is not one this site's operator approved
    LEAKY_REPLY = 4032        # the reply held something other than weights and scalar metrics
    POLICY_REFUSED = 4033     # the request is outside the site's own privacy policy


def refused_rule(reason: str) -> str:
    """The policy rule a "policy-refused: <rule>: <why>" reason names ('' if it names none)."""
    prefix = POLICY_REFUSED_REASON + ": "
    if not reason.startswith(prefix):
        return ""
    return reason[len(prefix):].split(":", 1)[0].strip()
