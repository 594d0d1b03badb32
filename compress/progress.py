"""A step-level progress bar on stderr for the verbs (hidden when stderr is not a terminal)."""

from __future__ import annotations


class Progress:
    """A step-level progress bar on stderr (hidden when stderr is not a terminal)."""

    def __init__(self, steps: list[str]) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=len(steps), disable=None, leave=False, bar_format="{desc} {bar} {n_fmt}/{total_fmt}")

    def __call__(self, msg: str) -> None:
        self.bar.set_description(msg)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
