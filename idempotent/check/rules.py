"""The rules ``idempotent check`` knows, and the findings and warnings it reports."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_SELECT",
    "RULES",
    "FileWarning",
    "Finding",
    "FixTarget",
    "Rule",
]


@dataclass(frozen=True, slots=True)
class Rule:
    """One check: its code, its linter-style name and the text the reports show."""

    code: str
    name: str
    category: str
    summary: str
    description: str
    default: bool


RULES: dict[str, Rule] = {
    rule.code: rule
    for rule in (
        Rule(
            code="IDEM001",
            name="missing-idempotency-key",
            category="correctness",
            summary="State-changing HTTP handler without idempotency handling",
            description=(
                "A POST, PUT or PATCH handler (DELETE when configured) neither uses @idempotent, "
                "nor reads the Idempotency-Key header, nor is served by an app that installs the "
                "idempotency middleware. A client that retries after a timeout runs it twice: two "
                "payments, two orders. Decorate the handler below its route decorator, or install "
                "the middleware on the app that serves it."
            ),
            default=True,
        ),
        Rule(
            code="IDEM002",
            name="task-without-idempotency",
            category="correctness",
            summary="Celery task body without idempotency handling",
            description=(
                "A Celery task runs again when its message is redelivered (acks_late after a worker "
                "crash, a broker's visibility timeout, an explicit retry). Without @idempotent below "
                "the task decorator its effects repeat. Opt-in: select IDEM002 to enable it."
            ),
            default=False,
        ),
        Rule(
            code="IDEM003",
            name="ineffective-idempotent-decorator",
            category="correctness",
            summary="@idempotent stacked above a route or task decorator",
            description=(
                "Decorators apply from the bottom up, and the route or task decorator registers the "
                "function it receives. An @idempotent placed above it wraps a function nobody calls: "
                "the registered handler runs without idempotency. Move @idempotent directly above the "
                "def, below the route or task decorator."
            ),
            default=True,
        ),
    )
}

#: Rule codes enabled when neither the command line nor the configuration selects any.
DEFAULT_SELECT = frozenset(code for code, rule in RULES.items() if rule.default)


@dataclass(frozen=True, slots=True)
class FixTarget:
    """Where and how the fixer changes the source for one finding (not part of any report)."""

    file: str
    kind: str  # "function", "method", "class" (insert a decorator) or "move" (IDEM003)
    anchor_line: int  # 1-based line of the ``def``/``class`` keyword
    move_start: int = 0  # IDEM003: 1-based first and last line of the misplaced decorator
    move_end: int = 0
    covered_by: str = ""  # a base class whose own fix (a dispatch decorator) covers this handler


@dataclass(frozen=True, slots=True)
class Finding:
    """A handler the checker reports, at the ``def`` (or ``class``) line that defines it."""

    path: str
    line: int
    column: int
    code: str
    message: str
    framework: str
    handler: str
    methods: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    target: FixTarget | None = field(default=None, compare=False, repr=False)

    @property
    def rule(self) -> Rule:
        """The rule this finding belongs to."""
        return RULES[self.code]

    @property
    def high(self) -> bool:
        """True when the handler's body shows a write, or the decorator is misplaced."""
        return bool(self.writes) or self.code == "IDEM003"

    def sort_key(self) -> tuple[str, int, int, str]:
        """Order findings by file, position and code."""
        return (self.path, self.line, self.column, self.code)


@dataclass(frozen=True, slots=True)
class FileWarning:
    """A file the checker could not read or parse; it was skipped and the rest still checked."""

    path: str
    message: str
