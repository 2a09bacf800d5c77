"""Push texts from Jinja2 templates: sandboxed, strict, and checked when a campaign is saved.

Templates see four names:
- `user`: `id`, `timezone`, `locale`-style profile attributes (every key of the profile's
  `attributes`), so `{{ user.tier }}` works;
- `items`: the recommended items, each with `item_id`, `title`, `category`, `price`, `url`,
  `image_url`; `item` is the first of them;
- `campaign`: `id` and `name`.

The environment is sandboxed (no attribute access to Python internals) and strict (an undefined
name or field raises instead of rendering as empty). When a campaign is saved its templates are
rendered against a sample context: a name other than the four above, an item field that does
not exist, or a user attribute that no stored profile has is rejected then. A user attribute
that only some users have must go through `default`, e.g. `{{ user.first_name | default("there") }}`;
otherwise that user's push is suppressed with reason `template_error` and counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError, meta
from jinja2.runtime import new_context
from jinja2.sandbox import SandboxedEnvironment

from notifier.campaign import Content
from recsvc.engine import Recommendation
from recsvc.errors import InputError

CONTEXT_NAMES = frozenset({"user", "items", "item", "campaign"})
USER_FIELDS = ("id", "timezone")
_SAMPLE_ITEM = {
    "item_id": "sample-item",
    "title": "Sample item",
    "category": "sample-category",
    "price": 9.99,
    "url": "https://example.com/item",
    "image_url": "https://example.com/item.jpg",
}


class RenderError(Exception):
    """A template failed for one user's data (e.g. an attribute they lack)."""


@dataclass(frozen=True)
class Rendered:
    title: str
    body: str
    deep_link: str | None


def item_context(item: Recommendation) -> dict[str, Any]:
    return {
        "item_id": item.item_id,
        "title": item.title,
        "category": item.category,
        "price": item.price,
        "url": item.url,
        "image_url": item.image_url,
    }


def user_context(user_id: str, profile: Mapping[str, Any] | None) -> dict[str, Any]:
    """What `user` holds in a template: the id, the timezone and every profile attribute."""
    profile = profile or {}
    attributes = profile.get("attributes") or {}
    return {**attributes, "id": user_id, "timezone": profile.get("timezone")}


def context(
    user_id: str,
    profile: Mapping[str, Any] | None,
    items: Sequence[Recommendation],
    campaign_id: str,
    campaign_name: str,
) -> dict[str, Any]:
    described = [item_context(item) for item in items]
    return {
        "user": user_context(user_id, profile),
        "items": described,
        "item": described[0] if described else {},
        "campaign": {"id": campaign_id, "name": campaign_name},
    }


class CompiledContent:
    """A campaign's templates, parsed once per run and rendered per user."""

    def __init__(self, environment: SandboxedEnvironment, content: Content) -> None:
        self._environment = environment
        self._title = environment.from_string(content.title)
        self._body = environment.from_string(content.body)
        self._deep_link = environment.from_string(content.deep_link) if content.deep_link else None
        # The templates' globals as one plain dict: `Template.render` copies the globals' ChainMap
        # per call, and its context lists them again, which cost as much as rendering a short text.
        self._globals = dict(self._title.globals)

    def render(self, values: Mapping[str, Any]) -> Rendered:
        names = {**self._globals, **values}  # read-only for the templates: their own names go elsewhere
        try:
            return Rendered(
                title=self._render(self._title, names).strip(),
                body=self._render(self._body, names).strip(),
                deep_link=self._render(self._deep_link, names).strip() if self._deep_link else None,
            )
        except TemplateError as exc:
            raise RenderError(str(exc)) from exc
        except (TypeError, ValueError, ArithmeticError) as exc:  # e.g. a filter given the wrong type
            raise RenderError(f"{type(exc).__name__}: {exc}") from exc

    def _render(self, template: Template, names: dict[str, Any]) -> str:
        """`template.render(names)` for names that already hold the globals. The context gets no
        globals of its own: Jinja reads them only to import templates, which need a loader."""
        context = new_context(self._environment, template.name, template.blocks, names, shared=True)
        try:
            return str(self._environment.concat(template.root_render_func(context)))
        except Exception:
            self._environment.handle_exception()  # raises, with the template's line in the traceback


class Templates:
    """The one Jinja environment of the notifier."""

    def __init__(self) -> None:
        self._environment = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)

    def compile(self, content: Content) -> CompiledContent:
        """Parse `content` (already checked with `check`)."""
        return CompiledContent(self._environment, content)

    def check(self, content: Content, known_attributes: Iterable[str] = ()) -> None:
        """Reject templates that cannot render: a syntax error, an unknown name or field.

        `known_attributes` are the profile attribute names that exist (from stored profiles).
        Raises `InputError` naming the field (`content.title`, `content.body`, `content.deep_link`).
        """
        user = {name: f"sample {name}" for name in known_attributes}
        user.update({"id": "sample-user", "timezone": "UTC"})
        items = [dict(_SAMPLE_ITEM, item_id=f"sample-item-{n}") for n in range(content.items)]
        sample = {"user": user, "items": items, "item": items[0], "campaign": {"id": "x", "name": "x"}}
        for field in ("title", "body", "deep_link"):
            source = getattr(content, field)
            if source is None:
                continue
            where = f"content.{field}"
            try:
                parsed = self._environment.parse(source)
            except TemplateError as exc:
                raise InputError(f"{where}: template syntax error: {exc}", field=where) from exc
            unknown = sorted(meta.find_undeclared_variables(parsed) - CONTEXT_NAMES)
            if unknown:
                raise InputError(
                    f"{where}: unknown name(s) {', '.join(unknown)}; templates may use "
                    f"{', '.join(sorted(CONTEXT_NAMES))}",
                    field=where,
                )
            try:
                self._environment.from_string(source).render(sample)
            except (TemplateError, TypeError, ValueError, ArithmeticError) as exc:
                raise InputError(
                    f"{where}: {exc} (a user attribute only some users have needs '| default(...)')",
                    field=where,
                ) from exc
