"""Worker processes that die: only the item that kills its worker fails, the others go on."""

from __future__ import annotations

from medseg.batch.executor import run_isolated
from medseg.errors import WorkerDiedError
from tests.batch.crashing import square_but_die_on_3


def test_an_item_that_kills_its_worker_fails_alone_and_the_others_are_done() -> None:
    outcomes = dict(run_isolated(square_but_die_on_3, range(1, 9), workers=2))
    assert sorted(outcomes) == list(range(1, 9))  # every item reported exactly once
    assert isinstance(outcomes[3], WorkerDiedError)
    assert "worker process died" in str(outcomes[3])
    assert isinstance(outcomes[5], ValueError) and str(outcomes[5]) == "five is refused"
    # the item that shared the pool with 3 when it died was retried alone and succeeded
    assert {i: outcomes[i] for i in (1, 2, 4, 6, 7, 8)} == {
        1: 1,
        2: 4,
        4: 16,
        6: 36,
        7: 49,
        8: 64,
    }


def test_a_worker_that_dies_at_once_fails_only_its_item() -> None:
    assert [type(o) for _, o in run_isolated(square_but_die_on_3, [3], workers=4)] == [
        WorkerDiedError
    ]
