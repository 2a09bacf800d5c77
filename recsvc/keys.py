"""Every Redis key recsvc writes, with its TTL beside it: the one place a key name is spelled.

All keys live under one prefix (`[redis] prefix`), so deployments and test runs can share a
server. Per-user keys carry the user id in a hash tag (`{u:<id>}`), so one user's keys stay in
one Redis Cluster slot and a user's state can be read or deleted in one transaction.
"""

from __future__ import annotations

from recsvc.config import ServingConfig

SECONDS_PER_DAY = 86_400

# The archive lease: long enough for one batch of the archive to be written; renewed per batch,
# so a crashed archiver blocks the next run for at most this long.
ARCHIVE_LOCK_TTL_SECONDS = 600


def history_ttl_seconds(serving: ServingConfig) -> int:
    """A user's recent history expires this long after their last recorded event."""
    return max(1, round(serving.history_ttl_days * SECONDS_PER_DAY))


class Keys:
    """Key names under one prefix; one method per key."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def _user(self, user_id: str, what: str) -> str:
        return f"{self.prefix}:user:{{u:{user_id}}}:{what}"

    # --- per user -------------------------------------------------------------------------------

    def history(self, user_id: str) -> str:
        """List of compact JSON events, newest first, capped at `serving.history_max`.

        TTL: `history_ttl_seconds`, refreshed on every write.
        """
        return self._user(user_id, "recent")

    def dismissed(self, user_id: str) -> str:
        """Set of item ids the user dismissed.

        No TTL: a dismissed item never comes back; the set is deleted with the user.
        """
        return self._user(user_id, "dismissed")

    def profile(self, user_id: str) -> str:
        """Hash: `attributes` (JSON), `timezone`, `push_consent` ("1"/"0"), and per device
        `device:<id>` (JSON {"token", "platform"}).

        No TTL: the profile is the user's record until they are forgotten.
        """
        return self._user(user_id, "profile")

    def user_keys(self, user_id: str) -> tuple[str, ...]:
        """Everything stored about one user, deleted together when the user is forgotten."""
        return self.history(user_id), self.dismissed(user_id), self.profile(user_id)

    def forgotten(self) -> str:
        """Set of user ids whose data was deleted.

        No TTL: archived files and models trained before the deletion may still hold the user, so
        the archive and the trainers must be able to leave them out for as long as those exist.
        """
        return f"{self.prefix}:users:forgotten"

    # --- trending -------------------------------------------------------------------------------

    def trending(self, category: str | None = None) -> str:
        """Sorted set item id -> forward-decayed weight, global or of one category.

        No TTL: scores decay by arithmetic, and a rescale drops members whose weight has faded.
        """
        if category is None:
            return f"{self.prefix}:trending:all"
        return f"{self.prefix}:trending:category:{category}"

    def trending_categories(self) -> str:
        """Set of categories that have a trending set, so a rescale finds every one.

        No TTL: lives as long as the trending sets it lists.
        """
        return f"{self.prefix}:trending:categories"

    def trending_epoch(self) -> str:
        """Unix seconds t0 of forward decay: scores are weights x 2^((t - t0) / half-life).

        No TTL: every trending score is relative to it.
        """
        return f"{self.prefix}:trending:epoch"

    # --- catalog --------------------------------------------------------------------------------

    def catalog_overrides(self) -> str:
        """Hash item id -> JSON of fields that override the model artifact's catalog.

        No TTL: overrides hold until the next artifact supersedes them.
        """
        return f"{self.prefix}:catalog:overrides"

    def catalog_version(self) -> str:
        """Counter incremented with every change of the overrides, so readers poll with one GET.

        No TTL: it must only grow.
        """
        return f"{self.prefix}:catalog:version"

    # --- event stream and its archive -----------------------------------------------------------

    def events(self) -> str:
        """Stream of accepted events (fields user_id, item_id, type, ts (unix micros), value).

        No TTL and no MAXLEN: entries leave only once the archive has them on disk (XTRIM MINID).
        """
        return f"{self.prefix}:events"

    def events_archived(self) -> str:
        """Stream id of the last event the archive wrote to disk (the high-water mark).

        No TTL: it is the archive's progress (if lost, the next run restores it from its file names).
        """
        return f"{self.prefix}:events:archived"

    def events_archive_lock(self) -> str:
        """Lease held by the one archive run allowed at a time. TTL: `ARCHIVE_LOCK_TTL_SECONDS`."""
        return f"{self.prefix}:events:archive-lock"
