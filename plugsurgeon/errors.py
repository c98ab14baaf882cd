"""Every error a user can cause is a PlugsurgeonError: one message saying what is wrong and a hint saying how to fix it."""

from __future__ import annotations


class PlugsurgeonError(Exception):
    """Base class for user-facing errors. ``hint`` names the fix, ideally a command to run.

    Every error a user can cause (a bad argument, a recipe, a model, a site) is one of these, so one
    ``except ps.PlugsurgeonError`` catches them all; a bug raises anything else. ``str(error)`` is
    the message, then ``hint: ...`` on its own line.

    Args:
        message: What is wrong, one sentence.
        hint: How to fix it, ideally a command to run, in Python's words (``input_shape=(1, 3, 224, 224)``).
        cli_hint: The same fix in the command line's words (``--input-shape 1,3,224,224``), where they
            differ; the CLI shows it instead of ``hint``.

    Attributes:
        message: What is wrong.
        hint: How to fix it, or None.
        cli_hint: How to fix it on the command line, or None (then ``hint`` says it for both).

    Examples:
        >>> try:
        ...     ps.apply(model, "cbamm")
        ... except ps.PlugsurgeonError as error:
        ...     print(error.message)
        ...     print(error.hint)
        unknown recipe 'cbamm'; did you mean 'cbam', 'bam', 'eca'?
        `plugsurgeon recipes` lists the built-in recipes; a file path must end in .yaml
    """

    def __init__(self, message: str, hint: str | None = None, *, cli_hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.cli_hint = cli_hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\nhint: {self.hint}"


class UnknownNameError(PlugsurgeonError, KeyError):
    """A plugin, recipe, model or role name that does not exist; the message suggests close names.

    Also a ``KeyError``, as a failed lookup by name. Takes ``message`` and ``hint`` as
    ``PlugsurgeonError`` does.

    Args:
        message: What is wrong, one sentence.
        hint: How to fix it, ideally a command to run.

    Examples:
        >>> ps.get_plugin("cbm")  # raises UnknownNameError: unknown plugin 'cbm'; did you mean 'cbam'?
    """

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return PlugsurgeonError.__str__(self)


class RecipeError(PlugsurgeonError):
    """A recipe that is malformed or cannot be planned on this model.

    Malformed: not YAML, a missing or unknown field, an argument a plugin does not take or out of its
    bounds. Cannot be planned: a plugin that cannot be built with the arguments at a site, two steps
    replacing one module. Takes ``message`` and ``hint`` as ``PlugsurgeonError`` does.

    Args:
        message: What is wrong, one sentence.
        hint: How to fix it, ideally a command to run.

    Examples:
        >>> ps.load_recipe({"name": "x", "steps": [{"plugin": "se", "at": "residual.branch", "args": {"reduction": 0}}]})
        Traceback (most recent call last):
        plugsurgeon.errors.RecipeError: ...
    """


class SiteError(PlugsurgeonError):
    """A step that matches no site, or a site a plugin cannot take.

    Raised when a step finds no site of its role (or none passing its ``where:``), when a plugin does
    not run at a site's shapes, or when the edited model fails where the original runs; the site is
    named. Takes ``message`` and ``hint`` as ``PlugsurgeonError`` does.

    Args:
        message: What is wrong, one sentence.
        hint: How to fix it, ideally a command to run.

    Examples:
        >>> ps.apply(torchvision.models.vgg16(), "cbam")  # raises SiteError: VGG has no residual.branch sites
    """


class ModelLoadError(PlugsurgeonError):
    """A model spec, checkpoint or saved directory that cannot be loaded.

    Takes ``message`` and ``hint`` as ``PlugsurgeonError`` does.

    Args:
        message: What is wrong, one sentence.
        hint: How to fix it, ideally a command to run.

    Examples:
        >>> ps.load_weights(ps.load_model("resnet18"), "resnet50.safetensors")
        Traceback (most recent call last):
        plugsurgeon.errors.ModelLoadError: ...
    """


class TraceError(PlugsurgeonError):
    """A model (or part of one) that torch.fx cannot trace or shape-propagate.

    Raised when the model itself does not run on the input shape given; a submodule that fx cannot
    follow is traced in parts instead, and reported as untraced. Takes ``message`` and ``hint`` as
    ``PlugsurgeonError`` does.

    Args:
        message: What is wrong, one sentence.
        hint: How to fix it, ideally a command to run.

    Examples:
        >>> ps.trace(torchvision.models.resnet18(), (1, 1, 224, 224))  # raises TraceError: 3 channels expected
    """


class VerificationError(PlugsurgeonError):
    """A transformed model that does not compute what it promised to.

    Raised by ``ps.deploy`` and ``ps.export_onnx`` when the result differs from the original by more
    than ``atol + rtol * max|output|``; the model passed is unchanged. Takes ``message`` and ``hint``
    as ``PlugsurgeonError`` does.

    Args:
        message: What is wrong, one sentence.
        hint: How to fix it, ideally a command to run.

    Examples:
        >>> ps.deploy(half_precision_model)  # may raise VerificationError; raise atol/rtol for fp16
        >>> ps.deploy(half_precision_model, atol=1e-2, rtol=1e-2)
    """


def did_you_mean(name: str, choices: list[str] | tuple[str, ...] | set[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, sorted(choices), n=3, cutoff=0.5)
    return f"did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, cut at ``limit`` characters ("" when it has none):
    what a one-line refusal quotes of a third-party error (tracebacks and multi-line dumps stay out)."""
    lines = str(error).strip().splitlines()
    return lines[0][:limit] if lines else ""
