"""What a data-parallel run needs beyond one process: errors the ranks agree on, and one run on every rank.

Under ``mpiexec -n N`` every rank runs the same loop, and a rank that stops
while the others wait in a collective would leave them waiting for ever. So
the run moves between collectives only through points that every rank
reaches: ``agree(fn)`` runs a step that may fail (reading a checkpoint,
loading the data, writing the run folder) and then tells every rank whether
any rank failed; if one did, every rank raises, with that rank's message.
Such an error, like one computed from all-reduced numbers (a diverged loss),
is *raised on every rank* (``raised_on_every_rank``): a program prints it
once, on rank 0, and every rank exits. Any other error happened on one rank
alone, and only ``distributed.abort`` can end the others.
"""
from .. import distributed
from .options import flag

_EVERY_RANK = "_minires_raised_on_every_rank"


def on_every_rank(exc):
    """Mark ``exc`` as raised alike on every rank (see ``raised_on_every_rank``); returns it."""
    try:
        setattr(exc, _EVERY_RANK, True)
    except AttributeError:  # an exception type without a __dict__: treated as one rank's
        pass
    return exc


def raised_on_every_rank(exc):
    """True when every rank raised ``exc`` together, so rank 0 can report it and every rank exit alike."""
    return bool(getattr(exc, _EVERY_RANK, False))


class RankError(ValueError):
    """Another rank's error that was a usage error or an unusable input there (a ``ValueError``)."""


class RankFailure(RuntimeError):
    """Another rank's failure while working (a missing file, a full disk ...) or a bug."""


def _describe(exc):
    """(kind, message) of an exception, picklable: what the other ranks need to raise it too."""
    kind = "usage" if isinstance(exc, ValueError) else "failure"
    message = str(exc) or type(exc).__name__
    if not isinstance(exc, (ValueError, OSError, RuntimeError, ImportError, MemoryError)) \
            and not type(exc).__module__.startswith("minires."):
        message = f"internal error (a bug in minires, please report it): {type(exc).__name__}: {message}"
    return kind, message


def agree(step, world=None):
    """``step()``'s result on every rank, or an error on every rank if ``step`` failed on any.

    A collective: every rank must call it at the same point. The rank that
    failed raises its own exception; the others raise a ``RankError`` (for a
    ``ValueError``) or a ``RankFailure`` that names the first failed rank and
    carries its message. Both are marked ``on_every_rank``. ``world``: the
    ranks taking part (default all; 1 runs ``step`` alone, as in one process).
    """
    world = distributed.world_size() if world is None else world
    if world == 1:
        return step()
    try:
        result, failure = step(), None
    except Exception as exc:  # noqa: BLE001 -- every kind must reach the other ranks
        result, failure = None, exc
    reports = distributed.all_gather_object(None if failure is None else _describe(failure))
    failed = [(r, report) for r, report in enumerate(reports) if report is not None]
    if not failed:
        return result
    if failure is not None:
        raise on_every_rank(failure)
    r, (kind, message) = failed[0]
    error = RankError if kind == "usage" else RankFailure
    raise on_every_rank(error(f"rank {r}: {message}"))


# options that may differ between the ranks: where each machine keeps its data
_LOCAL_OPTIONS = ("data_root", "download")


def check_same_run(config, model):
    """Raise on every rank unless all ranks have the same options and parameter shapes (``ValueError``).

    Compared by a hash first (one small gather); when they differ, the
    options themselves are gathered so the message can name the ones that differ.
    """
    options = {k: v for k, v in config.to_json().items() if k not in _LOCAL_OPTIONS}
    shapes = [(name, list(p.shape)) for name, p in model.named_parameters()]
    mine = distributed.fingerprint([options, shapes])
    prints = distributed.all_gather_object(mine)
    if all(p == prints[0] for p in prints):
        return
    everyone = distributed.all_gather_object((options, shapes))
    lines = []
    for r, (theirs, their_shapes) in enumerate(everyone[1:], 1):
        differ = [f"{flag(k)} {theirs.get(k)!r} (rank 0: {options_0!r})"
                  for k, options_0 in everyone[0][0].items() if theirs.get(k) != options_0]
        if their_shapes != everyone[0][1] and not differ:
            differ = ["the model's parameter shapes"]
        if differ:
            lines.append(f"rank {r} has {', '.join(differ)}")
    raise on_every_rank(ValueError(
        f"the ranks disagree on the run's options or model (compared by a hash of the options and the parameter "
        f"shapes at the start): {'; '.join(lines)}. Start every rank with the same command and files"))
