"""What every benchmark's command line must do with a bad argument."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest


def assert_usage_error(
    main: Callable[[list[str]], object],
    argv: Sequence[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``main(argv)`` exits 2, as argparse does, with ``message`` on stderr."""
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    assert info.value.code == 2
    assert message in capsys.readouterr().err
