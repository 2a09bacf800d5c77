"""Every Redis key recsvc writes, with its TTL beside it: the one place a key name is spelled.

All keys live under one prefix (`[redis] prefix`), so deployments and test runs can share a
server. Per-user keys carry the user id in a hash tag (`{u:<id>}`), so one user's keys stay in
one Redis Cluster slot and a user's state can be read or deleted in one transaction.
"""

from __future__ import annotations

from recsvc.config import ServingConfig

SECONDS_PER_DAY = 86_400

# The archive lease, renewed by a thread of the run every third of it: a killed archiver blocks
# the next run (and the scheduler's archive job) for at most this long. It was 600 s, renewed per
# batch, and a run killed with `kill -9` refused every rerun for ten minutes.
ARCHIVE_LOCK_TTL_SECONDS = 30

# Consumer groups: the notifier's on the event stream (triggers and conversions; the archive reads
# by id and trims only what this group has finished), and the delivery workers' on the outbox.
NOTIFIER_EVENTS_GROUP = "notifier"
DELIVERY_GROUP = "delivery"
DEAD_LETTER_MAXLEN = 100_000


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
        """Set of item ids never to recommend to the user: dismissed through feedback, or the
        item of an event of a type excluded from recommendations (a purchase, a dismiss event).

        No TTL: such an item never comes back (the history list, which also holds those events,
        keeps only the newest `history_max`); the set is deleted with the user.
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
        return (
            self.history(user_id),
            self.dismissed(user_id),
            self.profile(user_id),
            self.user_pushes(user_id),
            self.user_pushed_items(user_id),
        )

    def profiles(self) -> str:
        """Set of the ids of users who have a profile: the population campaigns select from.

        No TTL: members leave when the user is forgotten.
        """
        return f"{self.prefix}:users:with-profile"

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

    # --- push campaigns (notifier) --------------------------------------------------------------

    def campaigns(self) -> str:
        """Hash campaign id -> campaign JSON. No TTL: a campaign lives until it is deleted."""
        return f"{self.prefix}:campaigns"

    def campaign_runs(self, campaign_id: str) -> str:
        """Sorted set run id -> unix time the run started. No TTL: deleted with the campaign."""
        return f"{self.prefix}:campaign:{campaign_id}:runs"

    def campaign_run(self, campaign_id: str, run_id: str) -> str:
        """Hash of one run: `status` (running/done), `started`, `finished` (unix s), the checkpoint
        `position` (SSCAN cursor, or offset in `users`) and, for a run over given users (triggered
        pushes), `users` and `trigger_events` (JSON), so a crashed run resumes from here alone.

        No TTL: deleted with the campaign.
        """
        return f"{self.prefix}:campaign:{campaign_id}:run:{run_id}"

    def campaign_run_lock(self, campaign_id: str, run_id: str) -> str:
        """Lease of the one process executing a run. TTL: `notifier.run_lock_seconds`."""
        return f"{self.prefix}:campaign:{campaign_id}:run:{run_id}:lock"

    def campaign_writer(self) -> str:
        """Lease of the one run in the whole deployment that decides and writes pushes now: runs
        read a batch's caps before they write its pushes, so two at once could both push a user
        past a cap. Holds the run's token. TTL: `notifier.run_lock_seconds`, renewed by every
        batch write."""
        return f"{self.prefix}:campaign-writer"

    def campaign_stats(self, campaign_id: str, run_id: str | None = None) -> str:
        """Hash counter name -> count, of one run or (run None) of all runs together.

        No TTL: deleted with the campaign.
        """
        scope = "total" if run_id is None else f"run:{run_id}"
        return f"{self.prefix}:campaign:{campaign_id}:stats:{scope}"

    def campaign_triggers(self, campaign_id: str) -> str:
        """Sorted set user id -> unix time a triggered push falls due (one pending per user).

        No TTL: entries leave when they fire or are cancelled; deleted with the campaign.
        """
        return f"{self.prefix}:campaign:{campaign_id}:triggers"

    def campaign_trigger_events(self, campaign_id: str) -> str:
        """Hash user id -> JSON of the event that armed their pending trigger (item, ts).

        No TTL: mirrors `campaign_triggers`.
        """
        return f"{self.prefix}:campaign:{campaign_id}:trigger-events"

    def message(self, message_id: str) -> str:
        """Hash of one push message: campaign, run, user, title, body, deep link, items, control
        flag, due time, attempts, status, `error` (the last one), `sent_at`, and the tracking
        flags opened/clicked/converted.

        TTL: `notifier.message_ttl_days`, so opens and conversions can be attributed meanwhile.
        """
        return f"{self.prefix}:message:{message_id}"

    def user_pushes(self, user_id: str) -> str:
        """Sorted set "<campaign id>|<run id>" -> unix time the push is due, for caps and gaps.

        TTL: the longest window a rule looks back (a week, or the campaign gap if longer),
        refreshed on every write; older members are trimmed on write.
        """
        return self._user(user_id, "pushes")

    def user_pushed_items(self, user_id: str) -> str:
        """Hash item id -> JSON {"m": message id, "t": unix time}: items pushed to the user, for
        the no-repeat rule and for attributing purchases to the push.

        TTL: the longer of `item_repeat_days` and the conversion window, refreshed on write.
        """
        return self._user(user_id, "pushed-items")

    def outbox(self) -> str:
        """Stream of messages ready to send (field `message_id`), read by the delivery workers'
        consumer group `DELIVERY_GROUP`. The outbox keys share the hash tag `{outbox}`, so one
        script can move messages between them in Redis Cluster.

        No TTL: a worker deletes an entry once it has finished with it (XACK + XDEL).
        """
        return f"{self.prefix}:{{outbox}}"

    def outbox_delayed(self) -> str:
        """Sorted set message id -> unix time it may be sent: local-time sends, pushes deferred
        by quiet hours, retries with backoff. Due ones move to `outbox`.

        No TTL: members leave when they move.
        """
        return f"{self.prefix}:{{outbox}}:delayed"

    def dead_letters(self) -> str:
        """Stream of messages that failed `max_attempts` times (message id, last error).

        No TTL; capped at `DEAD_LETTER_MAXLEN` entries.
        """
        return f"{self.prefix}:{{outbox}}:dead"

    def provider_rate(self, provider: str) -> str:
        """Token bucket of one provider's send rate, shared by every worker. TTL: a few seconds."""
        return f"{self.prefix}:provider:{provider}:rate"

    def scheduler_lease(self) -> str:
        """Owner id of the scheduler allowed to fire jobs. TTL: `scheduler.lease_seconds`."""
        return f"{self.prefix}:scheduler:leader"

    def scheduler_jobs(self) -> str:
        """APScheduler's RedisJobStore jobs hash. No TTL: jobs leave when removed or finished."""
        return f"{self.prefix}:scheduler:jobs"

    def scheduler_run_times(self) -> str:
        """APScheduler's RedisJobStore next-run-time sorted set. No TTL: mirrors the jobs hash."""
        return f"{self.prefix}:scheduler:run-times"
