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

The sandbox also bounds what a template may build (`BoundedSandbox`): a 500-character template
could otherwise ask for a gigabyte (`{{ 'x' * 10**9 }}`). A rendered title, body or deep link is at
most `MAX_TEXT_CHARS` characters: longer is rejected on save, and suppressed as `template_error`
for a user whose data makes it longer.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jinja2 import (
    StrictUndefined,
    Template,
    TemplateError,
    TemplateSyntaxError,
    UndefinedError,
    meta,
    nodes,
)
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context, new_context
from jinja2.sandbox import SandboxedEnvironment
from jinja2.utils import missing

from notifier.campaign import Content
from recsvc.engine import Recommendation
from recsvc.errors import InputError

CONTEXT_NAMES = frozenset({"user", "items", "item", "campaign"})
# The longest rendered title, body or deep link, in characters: the order of what a push can carry
# at all (FCM refuses a message over 4,096 bytes), and a bound on what one render may build.
MAX_TEXT_CHARS = 4_096
# The largest integer a template may compute (`*`, `**`), in bits: far past any price or count.
MAX_NUMBER_BITS = 1_024
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
    """A template failed for one user's data (e.g. an attribute they lack); `field` names it."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class UnknownUserAttribute(UndefinedError):
    """The save-time check's sample user lacks the attribute: no sampled profile has it."""


class SampleUser(dict[str, Any]):
    """The save-time check's `user`: marks its missing attributes as `UnknownUserAttribute`."""


class _Undefined(StrictUndefined):
    """`StrictUndefined`, telling an attribute missing from the sample user apart from other
    undefined names, so only that error gets the hint about `| default(...)`."""

    __slots__ = ()

    def __init__(
        self,
        hint: str | None = None,
        obj: Any = missing,
        name: str | None = None,
        exc: type[TemplateError] = UndefinedError,
    ) -> None:
        if hint is None and isinstance(obj, SampleUser):
            hint, exc = f"no stored profile has the user attribute {name!r}", UnknownUserAttribute
        super().__init__(hint, obj, name, exc)  # type: ignore[arg-type]


class BoundedSandbox(SandboxedEnvironment):
    """The sandbox, refusing a `*` or `**` whose result would be huge (Jinja's documented hook
    for operators). Without it, `{{ 'x' * 10**9 }}` builds a gigabyte string, and Jinja computes
    such constant expressions even while compiling; intercepted operators are not folded."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            _check_product(left, right)
        elif operator == "**":
            _check_power(left, right)
        return super().call_binop(context, operator, left, right)


def _check_product(left: Any, right: Any) -> None:
    """Refuse a repetition longer than `MAX_TEXT_CHARS` or a product over `MAX_NUMBER_BITS`."""
    if isinstance(left, int) and isinstance(right, int):
        if left.bit_length() + right.bit_length() > MAX_NUMBER_BITS:
            raise SecurityError(f"'*' would compute a number over {MAX_NUMBER_BITS} bits")
        return
    for sequence, count in ((left, right), (right, left)):
        repeats = isinstance(sequence, str | list | tuple) and isinstance(count, int)
        if repeats and len(sequence) * count > MAX_TEXT_CHARS:
            raise SecurityError(
                f"'*' would repeat {len(sequence)} element(s) {count} times; at most {MAX_TEXT_CHARS} in all"
            )


def _check_power(base: Any, exponent: Any) -> None:
    """Refuse an integer power over `MAX_NUMBER_BITS` (a float one overflows quickly by itself)."""
    grows = isinstance(base, int) and isinstance(exponent, int) and exponent > 0
    if grows and (abs(base).bit_length() - 1) * exponent > MAX_NUMBER_BITS:
        raise SecurityError(f"'**' would compute a number over {MAX_NUMBER_BITS} bits")


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
        """The texts for one user; `RenderError` names the template that failed for their data."""
        names = {**self._globals, **values}  # read-only for the templates: their own names go elsewhere
        return Rendered(
            title=self._text("title", self._title, names),
            body=self._text("body", self._body, names),
            deep_link=self._text("deep_link", self._deep_link, names) if self._deep_link else None,
        )

    def _text(self, field: str, template: Template, names: dict[str, Any]) -> str:
        try:
            text = self._render(template, names).strip()
        except TemplateError as exc:
            raise RenderError(field, str(exc)) from exc
        except (TypeError, ValueError, ArithmeticError) as exc:  # e.g. a filter given the wrong type
            raise RenderError(field, f"{type(exc).__name__}: {exc}") from exc
        if len(text) > MAX_TEXT_CHARS:
            raise RenderError(field, f"renders {len(text)} characters; at most {MAX_TEXT_CHARS}")
        return text

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
        self._environment = BoundedSandbox(undefined=_Undefined, autoescape=False)

    def compile(self, content: Content) -> CompiledContent:
        """Parse `content` (already checked with `check`)."""
        return CompiledContent(self._environment, content)

    def check(self, content: Content, attributes: Mapping[str, Any] | None = None) -> None:
        """Reject templates that cannot render: a syntax error, an unknown name, filter, test or
        field, a text over `MAX_TEXT_CHARS`, or anything the sandbox refuses.

        `attributes` are sample values of the profile attributes that exist (`sample_attributes`).
        The templates are rendered for a sample user with them, exactly as a run renders them.
        Raises `InputError` naming the field (`content.title`, `content.body`, `content.deep_link`).
        """
        for field in ("title", "body", "deep_link"):
            source = getattr(content, field)
            if source is not None:
                self._check_names(f"content.{field}", source)
        user = SampleUser(attributes or {})
        user.update({"id": "sample-user", "timezone": "UTC"})
        items = [dict(_SAMPLE_ITEM, item_id=f"sample-item-{n}") for n in range(content.items)]
        sample = {"user": user, "items": items, "item": items[0], "campaign": {"id": "x", "name": "x"}}
        try:
            self.compile(content).render(sample)
        except RenderError as exc:
            where = f"content.{exc.field}"
            hint = ""
            if isinstance(exc.__cause__, UnknownUserAttribute):
                hint = " (a user attribute only some users have needs '| default(...)')"
            raise InputError(f"{where}: {exc.reason}{hint}", field=where) from exc

    def _check_names(self, where: str, source: str) -> None:
        """The template parses, and names only context names, filters and tests that exist."""
        try:
            parsed = self._environment.parse(source)
            unknown = sorted(meta.find_undeclared_variables(parsed) - CONTEXT_NAMES)
        except TemplateSyntaxError as exc:  # includes an unknown filter or test found while compiling
            reason = f"{exc.message} (line {exc.lineno})"
            raise InputError(f"{where}: template syntax error: {reason}", field=where) from exc
        except TemplateError as exc:
            raise InputError(f"{where}: template syntax error: {exc}", field=where) from exc
        if unknown:
            raise InputError(
                f"{where}: unknown name(s) {', '.join(unknown)}; templates may use "
                f"{', '.join(sorted(CONTEXT_NAMES))}",
                field=where,
            )
        for kind, node_type, known in (
            ("filter", nodes.Filter, self._environment.filters),
            ("test", nodes.Test, self._environment.tests),
        ):
            missing_names = sorted({node.name for node in parsed.find_all(node_type)} - set(known))
            if missing_names:  # Jinja reports those in a branch only when the branch runs
                raise InputError(f"{where}: unknown {kind}(s) {', '.join(missing_names)}", field=where)


def sample_attributes(stored: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """A sample value for each attribute name in `stored` (profiles' attributes), of the type most
    of them store it as: `{{ user.points + 1 }}` is valid when points are numbers, and a sample
    string would reject it. Scalars are synthetic (no user's data in an error message, the same
    result whichever profiles were sampled); lists, objects and nulls are taken as stored, since
    their shape is what a template reads."""
    kinds: defaultdict[str, Counter[type]] = defaultdict(Counter)
    examples: dict[tuple[str, type], Any] = {}
    for attributes in stored:
        for name, value in attributes.items():
            kinds[name][type(value)] += 1
            examples.setdefault((name, type(value)), value)
    samples = {}
    for name, counts in kinds.items():
        [(kind, _)] = counts.most_common(1)
        samples[name] = _sample_value(name, kind, examples[name, kind])
    return samples


def _sample_value(name: str, kind: type, example: Any) -> Any:
    if kind is bool:
        return True
    if kind is int:
        return 1  # not 0: `100 / user.points` is valid
    if kind is float:
        return 1.5
    if kind is str:
        return f"sample {name}"
    return example
