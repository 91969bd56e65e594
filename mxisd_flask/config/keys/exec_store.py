"""Configuration keys of the exec store (issue #3).

mxisd's names (its docs/stores/exec.md): ``exec.<feature>.enabled`` and one
block of process keys per action. ``exec.timeout`` and the per-action
``timeout`` are ours: mxisd waited for a script forever; so is the listing
action (``exec.identity.listing``, switched by ``exec.listing.enabled``),
which feeds v2 hashed lookups, newer than mxisd.
"""

from __future__ import annotations

from typing import Any

# One action a script can do: (key prefix, what it answers).
PROCESSES = {
    "exec.auth": "auth",
    "exec.directory.search.byName": "directory",
    "exec.directory.search.byThreepid": "directory",
    "exec.identity.lookup.single": "single",
    "exec.identity.lookup.bulk": "bulk",
    "exec.identity.listing": "listing",
    "exec.profile.displayName": "profile",
    "exec.profile.threePid": "profile",
    "exec.profile.role": "profile",
}
FEATURES = ("auth", "directory", "identity", "listing", "profile")
TOKENS = (
    "localpart",
    "domain",
    "mxid",
    "password",
    "medium",
    "address",
    "type",
    "query",
)


def _process_keys(prefix: str) -> dict[str, tuple[tuple[type, ...], Any]]:
    keys: dict[str, tuple[tuple[type, ...], Any]] = {
        f"{prefix}.command": ((str,), None),
        f"{prefix}.args": ((list,), []),
        f"{prefix}.env": ((dict,), {}),
        f"{prefix}.input.type": ((str,), None),
        f"{prefix}.input.template": ((str,), None),
        f"{prefix}.output.type": ((str,), None),
        # Known so that setting it fails with a reason: mxisd never read it.
        f"{prefix}.output.template": ((str,), None),
        f"{prefix}.exit.success": ((list, int), [0]),
        f"{prefix}.exit.failure": ((list, int), [1]),
        f"{prefix}.timeout": ((int, float), None),
    }
    for token in TOKENS:
        keys[f"{prefix}.token.{token}"] = ((str,), None)
    return keys


KEYS: dict[str, tuple[tuple[type, ...], Any]] = {
    "exec.enabled": ((bool,), False),
    # Seconds a run may take before it is killed (the store then fails).
    "exec.timeout": ((int, float), 5),
}
for _token in TOKENS:
    KEYS[f"exec.token.{_token}"] = ((str,), "{" + _token + "}")
for _feature in FEATURES:
    # Unset: follows exec.enabled (mxisd's rule).
    KEYS[f"exec.{_feature}.enabled"] = ((bool,), None)
for _prefix in PROCESSES:
    KEYS.update(_process_keys(_prefix))
