"""Push campaigns for marketers (admin): define, pause, resume, delete, and read their statistics.

The campaign logic lives in `notifier`; these routes only translate HTTP to it.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Path, Response
from pydantic import ConfigDict, Field

from notifier.campaign import Campaign, CampaignSpec, Segment
from notifier.runner import manual_run_id
from notifier.stats import campaign_stats
from recsvc.keys import Keys
from serving.deps import AdminKey, ServicesDep, UserIdQuery
from serving.openapi import AUTH, problems

router = APIRouter(prefix="/v1/campaigns", tags=["campaigns"])

CampaignId = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", examples=["cart-reminder"])]

_EXAMPLE: dict[str, Any] = {
    "id": "weekly-picks",
    "name": "Weekly picks",
    "segment": {
        "attributes": [{"field": "tier", "op": "in", "value": ["gold", "silver"]}],
        "active_within_days": 30,
        "push_consent": True,
        "control_percent": 10,
    },
    "schedule": {"kind": "local_time", "at": "18:30"},
    "content": {
        "title": "{{ item.title }} and more, picked for you",
        "body": "Hi {{ user.first_name | default('there') }}, {{ items | length }} new picks are waiting.",
        "deep_link": "shop://product/{{ item.item_id }}",
        "items": 3,
        "source": "personalized",
    },
    "rules": {"max_per_day": 1},
}


class CampaignCreate(CampaignSpec):
    """A new campaign; `id` is made from the name when absent."""

    id: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_EXAMPLE]})


@router.post(
    "",
    status_code=201,
    response_model=Campaign,
    summary="Create a campaign (admin)",
    responses=problems(400, *AUTH, 409, 422, 503),
)
async def create_campaign(_: AdminKey, body: CampaignCreate, services: ServicesDep) -> Campaign:
    """Validate and save a campaign. Templates are rendered against sample data first: an unknown
    name or field is a 400 naming the template."""
    spec = CampaignSpec.model_validate(body.model_dump(exclude={"id"}))
    with services.guarded("create_campaign"):
        return await services.campaigns.create(spec, body.id)


@router.get(
    "", response_model=list[Campaign], summary="List campaigns (admin)", responses=problems(*AUTH, 503)
)
async def list_campaigns(_: AdminKey, services: ServicesDep) -> list[Campaign]:
    with services.guarded("list_campaigns"):
        return await services.campaigns.list()


@router.post(
    "/audience",
    summary="Size a segment before saving a campaign (admin)",
    responses=problems(*AUTH, 422, 503),
)
async def segment_audience(_: AdminKey, body: Segment, services: ServicesDep) -> dict[str, Any]:
    """How many users the segment matches now, with consent, with a device, both, and the
    expected sample and control sizes per run; exact up to 100,000 profiles, else estimated from a
    random sample (`estimated: true`)."""
    with services.guarded("audience"):
        return asdict(await services.runner.audience(body))


@router.get(
    "/{campaign_id}",
    response_model=Campaign,
    summary="Read a campaign (admin)",
    responses=problems(*AUTH, 404, 422, 503),
)
async def get_campaign(_: AdminKey, campaign_id: CampaignId, services: ServicesDep) -> Campaign:
    with services.guarded("get_campaign"):
        return await services.campaigns.get(campaign_id)


@router.put(
    "/{campaign_id}",
    response_model=Campaign,
    summary="Replace a campaign's definition (admin)",
    responses=problems(400, *AUTH, 404, 422, 503),
)
async def replace_campaign(
    _: AdminKey, campaign_id: CampaignId, body: CampaignSpec, services: ServicesDep
) -> Campaign:
    """Its id, status, creation time and statistics stay; the scheduler picks up a new schedule."""
    with services.guarded("replace_campaign"):
        return await services.campaigns.replace(campaign_id, body)


@router.delete(
    "/{campaign_id}",
    status_code=204,
    summary="Delete a campaign (admin)",
    responses=problems(*AUTH, 404, 422, 503),
)
async def delete_campaign(_: AdminKey, campaign_id: CampaignId, services: ServicesDep) -> Response:
    """Deletes the campaign with its runs, statistics and pending triggered pushes."""
    with services.guarded("delete_campaign"):
        await services.campaigns.delete(campaign_id)
    return Response(status_code=204)


@router.post(
    "/{campaign_id}/pause",
    response_model=Campaign,
    summary="Pause a campaign (admin)",
    responses=problems(*AUTH, 404, 422, 503),
)
async def pause_campaign(_: AdminKey, campaign_id: CampaignId, services: ServicesDep) -> Campaign:
    """No new run starts and no trigger fires until it is resumed; pending triggers wait."""
    with services.guarded("pause_campaign"):
        return await services.campaigns.set_status(campaign_id, "paused")


@router.post(
    "/{campaign_id}/resume",
    response_model=Campaign,
    summary="Resume a paused campaign (admin)",
    responses=problems(*AUTH, 404, 422, 503),
)
async def resume_campaign(_: AdminKey, campaign_id: CampaignId, services: ServicesDep) -> Campaign:
    with services.guarded("resume_campaign"):
        return await services.campaigns.set_status(campaign_id, "active")


@router.post(
    "/{campaign_id}/run",
    status_code=202,
    summary="Run a campaign now (admin)",
    responses=problems(*AUTH, 404, 409, 422, 503),
)
async def run_now(_: AdminKey, campaign_id: CampaignId, services: ServicesDep) -> dict[str, str]:
    """Queues a run over the whole segment; the scheduler's leader executes it within a minute
    (`recsvc campaigns run` executes one at once, in its own process). Its results appear in the
    campaign's statistics under the returned `run_id`."""
    run_id = manual_run_id(services.clock())
    with services.guarded("queue_run"):
        await services.runner.queue(await services.campaigns.get(campaign_id), run_id)
    return {"campaign_id": campaign_id, "run_id": run_id, "status": "queued"}


@router.get(
    "/{campaign_id}/stats",
    summary="A campaign's results, per run and in total (admin)",
    responses=problems(*AUTH, 404, 422, 503),
)
async def get_stats(_: AdminKey, campaign_id: CampaignId, services: ServicesDep) -> dict[str, Any]:
    """Targeted, suppressed by reason, sent, delivered, failed, opened, clicked and converted, and
    the control group's targeted and converted, with conversion rates (lift = treatment rate over
    control rate)."""
    with services.guarded("campaign_stats"):
        await services.campaigns.get(campaign_id)
        return await campaign_stats(services.redis, Keys(services.settings.redis.prefix), campaign_id)


@router.get(
    "/{campaign_id}/audience",
    summary="Size a campaign's segment (admin)",
    responses=problems(*AUTH, 404, 422, 503),
)
async def campaign_audience(_: AdminKey, campaign_id: CampaignId, services: ServicesDep) -> dict[str, Any]:
    """`POST /v1/campaigns/audience` for a saved campaign's segment and control group."""
    with services.guarded("audience"):
        campaign = await services.campaigns.get(campaign_id)
        return asdict(await services.runner.audience(campaign.segment, campaign.id))


@router.get(
    "/{campaign_id}/preview",
    summary="What one user would get now, and why (admin)",
    responses=problems(*AUTH, 404, 422, 503),
)
async def preview(
    _: AdminKey,
    campaign_id: CampaignId,
    user_id: UserIdQuery,
    services: ServicesDep,
) -> dict[str, Any]:
    """Renders exactly the push a run would write for this user now, writing nothing: their group
    (treatment, control, not sampled, not in the segment), each segment condition with its result,
    the suppression reason if any, when it would be sent (after quiet hours), the text and the items."""
    with services.guarded("preview"):
        campaign = await services.campaigns.get(campaign_id)
        return asdict(await services.runner.preview(campaign, user_id))
