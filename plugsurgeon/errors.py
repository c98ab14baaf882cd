"""Every error a user can cause is a PlugsurgeonError: one message saying what is wrong and a hint saying how to fix it."""

from __future__ import annotations


class PlugsurgeonError(Exception):
    """Base class for user-facing errors. ``hint`` names the fix, ideally a command to run."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\nhint: {self.hint}"


class UnknownNameError(PlugsurgeonError, KeyError):
    """A plugin, recipe, model or role name that does not exist."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return PlugsurgeonError.__str__(self)


class RecipeError(PlugsurgeonError):
    """A recipe that is malformed or cannot be planned on this model."""


class SiteError(PlugsurgeonError):
    """A step that matches no site, or a site a plugin cannot take."""


class ModelLoadError(PlugsurgeonError):
    """A model spec, checkpoint or saved directory that cannot be loaded."""


class TraceError(PlugsurgeonError):
    """A model (or part of one) that torch.fx cannot trace or shape-propagate."""


class VerificationError(PlugsurgeonError):
    """A transformed model that does not compute what it promised to."""


def did_you_mean(name: str, choices: list[str] | tuple[str, ...] | set[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, sorted(choices), n=3, cutoff=0.5)
    return f"did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, cut at ``limit`` characters ("" when it has none):
    what a one-line refusal quotes of a third-party error (tracebacks and multi-line dumps stay out)."""
    lines = str(error).strip().splitlines()
    return lines[0][:limit] if lines else ""
