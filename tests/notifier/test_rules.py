"""Quiet hours, caps, gaps and the no-repeat window, as pure functions of an injected time."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from notifier import rules, stats
from notifier.rules import PushedItem, PushRecord
from recsvc.config import PushRules, TrackingConfig

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
LOS_ANGELES = ZoneInfo("America/Los_Angeles")
KIRITIMATI = ZoneInfo("Pacific/Kiritimati")  # UTC+14
PAGO_PAGO = ZoneInfo("Pacific/Pago_Pago")  # UTC-11
NIGHT = PushRules(quiet_start="21:00", quiet_end="08:00")


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[arg-type]


def local(zone: ZoneInfo, *parts: int, fold: int = 0) -> datetime:
    return datetime(*parts, tzinfo=zone, fold=fold).astimezone(UTC)  # type: ignore[arg-type]


# --- quiet hours -----------------------------------------------------------------------------------


@pytest.mark.parametrize("zone", [BERLIN, LOS_ANGELES])
def test_quiet_hours_wrapping_midnight_defer_to_the_next_local_end(zone: ZoneInfo) -> None:
    evening = local(zone, 2024, 2, 1, 22, 30)
    assert rules.after_quiet_hours(evening, NIGHT, zone) == local(zone, 2024, 2, 2, 8, 0)
    small_hours = local(zone, 2024, 2, 2, 3, 0)
    assert rules.after_quiet_hours(small_hours, NIGHT, zone) == local(zone, 2024, 2, 2, 8, 0)
    # The window is [start, end): its start is quiet, its end is not.
    assert rules.in_quiet_hours(local(zone, 2024, 2, 1, 21, 0), NIGHT, zone)
    assert not rules.in_quiet_hours(local(zone, 2024, 2, 1, 20, 59), NIGHT, zone)
    at_end = local(zone, 2024, 2, 2, 8, 0)
    assert rules.after_quiet_hours(at_end, NIGHT, zone) == at_end
    noon = local(zone, 2024, 2, 1, 12, 0)
    deferred = rules.timing(evening, NIGHT, zone)
    assert deferred.deferred and not rules.timing(noon, NIGHT, zone).deferred


def test_the_same_instant_is_quiet_in_one_zone_and_not_in_another() -> None:
    instant = utc(2024, 2, 1, 21, 30)  # 22:30 in Berlin, 13:30 in Los Angeles
    assert rules.after_quiet_hours(instant, NIGHT, BERLIN) == utc(2024, 2, 2, 7, 0)
    assert rules.after_quiet_hours(instant, NIGHT, LOS_ANGELES) == instant


def test_a_window_within_one_day_and_no_window() -> None:
    lunch = PushRules(quiet_start="12:00", quiet_end="14:00")
    assert rules.after_quiet_hours(utc(2024, 2, 1, 13, 0), lunch, ZoneInfo("UTC")) == utc(2024, 2, 1, 14, 0)
    assert rules.after_quiet_hours(utc(2024, 2, 1, 11, 0), lunch, ZoneInfo("UTC")) == utc(2024, 2, 1, 11, 0)
    off = PushRules(quiet_start="08:00", quiet_end="08:00")
    assert not rules.in_quiet_hours(utc(2024, 2, 1, 8, 0), off, ZoneInfo("UTC"))


def test_spring_forward_night_ends_quiet_hours_at_local_eight_in_summer_time() -> None:
    # Berlin 2024-03-31: 02:00 CET -> 03:00 CEST; 08:00 local that morning is 06:00 UTC, not 07:00.
    evening = local(BERLIN, 2024, 3, 30, 22, 0)
    assert rules.after_quiet_hours(evening, NIGHT, BERLIN) == utc(2024, 3, 31, 6, 0)
    # New York 2024-03-10: 08:00 EDT is 12:00 UTC (the day before, 08:00 EST was 13:00 UTC).
    assert rules.after_quiet_hours(local(NEW_YORK, 2024, 3, 9, 23, 0), NIGHT, NEW_YORK) == utc(
        2024, 3, 10, 12, 0
    )


def test_a_quiet_end_inside_the_spring_forward_gap_becomes_the_gap_end() -> None:
    gap_end = PushRules(quiet_start="01:00", quiet_end="02:30")  # 02:30 does not exist that night
    instant = local(BERLIN, 2024, 3, 31, 1, 15)
    assert rules.after_quiet_hours(instant, gap_end, BERLIN) == utc(2024, 3, 31, 1, 0)  # 03:00 CEST
    assert rules.wall_instants(date(2024, 3, 31), time(2, 30), BERLIN) == [utc(2024, 3, 31, 1, 0)]
    assert rules.wall_time(date(2024, 3, 10), time(2, 30), NEW_YORK) == utc(2024, 3, 10, 7, 0)  # 03:00 EDT


def test_fall_back_night_ends_quiet_hours_at_local_eight_in_winter_time() -> None:
    # Berlin 2024-10-27: 03:00 CEST -> 02:00 CET; 08:00 local is 07:00 UTC.
    evening = local(BERLIN, 2024, 10, 26, 22, 0)
    assert rules.after_quiet_hours(evening, NIGHT, BERLIN) == utc(2024, 10, 27, 7, 0)
    assert rules.after_quiet_hours(local(NEW_YORK, 2024, 11, 2, 23, 0), NIGHT, NEW_YORK) == utc(
        2024, 11, 3, 13, 0
    )


def test_an_ambiguous_wall_time_is_its_first_occurrence_but_quiet_hours_end_at_the_next_one() -> None:
    assert rules.wall_instants(date(2024, 10, 27), time(2, 30), BERLIN) == [
        utc(2024, 10, 27, 0, 30),
        utc(2024, 10, 27, 1, 30),
    ]
    assert rules.wall_time(date(2024, 11, 3), time(1, 30), NEW_YORK) == utc(2024, 11, 3, 5, 30)  # EDT
    short = PushRules(quiet_start="01:00", quiet_end="02:45")
    second_pass = local(BERLIN, 2024, 10, 27, 2, 30, fold=1)  # 01:30 UTC, in the repeated hour
    assert second_pass == utc(2024, 10, 27, 1, 30)
    assert rules.after_quiet_hours(second_pass, short, BERLIN) == utc(2024, 10, 27, 1, 45)


def test_local_send_times_respect_weekdays_and_the_date_line() -> None:
    now = utc(2024, 2, 1, 12, 0)  # a Thursday in UTC; already Friday 02:00 in Kiritimati
    nine = time(9, 0)
    assert rules.next_local_time(now, nine, KIRITIMATI) == local(KIRITIMATI, 2024, 2, 2, 9, 0)
    assert rules.next_local_time(now, nine, PAGO_PAGO) == local(PAGO_PAGO, 2024, 2, 1, 9, 0)
    assert rules.next_local_time(now, nine, ZoneInfo("UTC"), ["mon"]) == utc(2024, 2, 5, 9, 0)
    assert rules.next_local_time(now, time(12, 0), ZoneInfo("UTC")) == now  # at the time itself


# --- caps and gaps ---------------------------------------------------------------------------------


def pushes(*entries: tuple[str, datetime]) -> list[PushRecord]:
    return [PushRecord(campaign, "r0", moment.timestamp()) for campaign, moment in entries]


def test_daily_cap_counts_the_users_local_calendar_day_across_the_date_line() -> None:
    daily = PushRules(max_per_day=1, max_per_week=0, min_gap_hours=0)
    due = utc(2024, 2, 1, 12, 0)  # Kiritimati 2024-02-02 02:00, Pago Pago 2024-02-01 01:00
    earlier = pushes(("other", utc(2024, 2, 1, 10, 30)))  # Kiritimati 02-02 00:30, Pago Pago 01-31 23:30
    assert rules.cap_reason(daily, KIRITIMATI, due, earlier, "c", "r1") == stats.DAILY_CAP
    assert rules.cap_reason(daily, PAGO_PAGO, due, earlier, "c", "r1") is None


def test_daily_and_weekly_caps_differ() -> None:
    capped = PushRules(max_per_day=2, max_per_week=3, min_gap_hours=0)
    due = utc(2024, 2, 7, 12, 0)
    utc_zone = ZoneInfo("UTC")
    two_today = pushes(("a", utc(2024, 2, 7, 8, 0)), ("b", utc(2024, 2, 7, 9, 0)))
    assert rules.cap_reason(capped, utc_zone, due, two_today, "c", "r1") == stats.DAILY_CAP
    spread = pushes(
        ("a", utc(2024, 2, 1, 12, 0, 1)), ("b", utc(2024, 2, 4, 9, 0)), ("d", utc(2024, 2, 7, 9, 0))
    )
    assert rules.cap_reason(capped, utc_zone, due, spread, "c", "r1") == stats.WEEKLY_CAP
    # The week is the 7 days ending at the due time: a push exactly 7 days before has left it.
    left = pushes(("a", utc(2024, 1, 31, 12, 0)), ("b", utc(2024, 2, 4, 9, 0)), ("d", utc(2024, 2, 7, 9, 0)))
    assert rules.cap_reason(capped, utc_zone, due, left, "c", "r1") is None
    unlimited = PushRules(max_per_day=0, max_per_week=0, min_gap_hours=0)
    assert rules.cap_reason(unlimited, utc_zone, due, two_today + spread, "c", "r1") is None


def test_min_gap_applies_per_campaign_not_across_campaigns() -> None:
    gap = PushRules(max_per_day=0, max_per_week=0, min_gap_hours=24)
    due = utc(2024, 2, 2, 12, 0)
    utc_zone = ZoneInfo("UTC")
    recent = pushes(("c", utc(2024, 2, 1, 22, 0)))
    assert rules.cap_reason(gap, utc_zone, due, recent, "c", "r1") == stats.MIN_GAP
    assert rules.cap_reason(gap, utc_zone, due, recent, "other", "r1") is None
    # A push of the campaign due later (deferred) is as close; exactly the gap apart is allowed.
    assert (
        rules.cap_reason(gap, utc_zone, due, pushes(("c", utc(2024, 2, 3, 8, 0))), "c", "r1") == stats.MIN_GAP
    )
    assert rules.cap_reason(gap, utc_zone, due, pushes(("c", utc(2024, 2, 1, 12, 0))), "c", "r1") is None
    # The run's own record (a resumed run) is not an earlier push.
    own = [PushRecord("c", "r1", utc(2024, 2, 2, 11, 0).timestamp())]
    assert rules.cap_reason(gap, utc_zone, due, own, "c", "r1") is None


def test_push_members_round_trip() -> None:
    member = rules.push_member("spring-sale", "2024-02-01T12:00")
    assert rules.push_record(member, 5.0) == PushRecord("spring-sale", "2024-02-01T12:00", 5.0)


# --- no repeats and timezones --------------------------------------------------------------------


def test_repeat_window_boundaries() -> None:
    due = utc(2024, 2, 15, 12, 0)
    window = timedelta(days=14)
    pushed = {
        "edge": PushedItem("m1", (due - window).timestamp()),  # exactly 14 days: allowed again
        "inside": PushedItem("m2", (due - window + timedelta(seconds=1)).timestamp()),
        "later": PushedItem("m3", (due + timedelta(hours=1)).timestamp()),
    }
    assert rules.recently_pushed(pushed, due, 14) == {"inside", "later"}
    assert rules.recently_pushed(pushed, due, 0) == set()


def test_an_unknown_or_missing_zone_falls_back_to_the_default() -> None:
    assert rules.user_zone("Mars/Olympus_Mons", "Europe/Berlin") == BERLIN
    assert rules.user_zone(None, "UTC") == ZoneInfo("UTC")
    assert rules.user_zone("Pacific/Kiritimati", "UTC") == KIRITIMATI


def test_record_windows_cover_every_campaigns_rules() -> None:
    assert rules.record_window_seconds([PushRules(min_gap_hours=24)]) == 7 * 86_400
    assert (
        rules.record_window_seconds([PushRules(min_gap_hours=24), PushRules(min_gap_hours=240)]) == 240 * 3600
    )
    tracking = TrackingConfig(conversion_window_hours=72)
    assert rules.item_window_seconds([PushRules(item_repeat_days=14)], tracking) == 14 * 86_400
    assert rules.item_window_seconds([PushRules(item_repeat_days=1)], tracking) == 72 * 3600
