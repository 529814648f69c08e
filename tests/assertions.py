"""Assertions that several test files share (imported as pytest imports ported_blocks: tests/ is on sys.path)."""
import pytest


def raises(kind, call, *words):
    """Run ``call``; it must raise ``kind`` with every one of ``words`` in its message. Returns the message."""
    with pytest.raises(kind) as info:
        call()
    msg = str(info.value)
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"
    return msg
