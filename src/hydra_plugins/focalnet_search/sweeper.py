"""Hydra finds sweepers only under hydra_plugins: this is focalnet.search.sweeper.AsyncSearch under that name.

The import waits for the sweep itself, so that every other Hydra command (which imports all plugins) does not pay for
optuna's import.
"""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper


class FocalnetOptunaSweeper(Sweeper):
    def __init__(self, **options: Any) -> None:
        from focalnet.search.sweeper import AsyncSearch

        self.search = AsyncSearch(**options)

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.search.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        return self.search.sweep(arguments)
