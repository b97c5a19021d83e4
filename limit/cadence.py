"""When a run writes its full training state (``state.pt``): every N epochs, or every N minutes of wall time.

Validation runs every epoch either way (early stopping and selection depend on it). A run killed between
two checkpoints redoes the epochs since the last one and, being a pure function of its state, ends with
the same numbers.
"""
import re
import time

_MINUTES = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:m|min|minutes?)\s*$")


def parse_checkpoint_every(value):
    """``5`` or ``"5"`` (epochs) or ``"30min"`` (minutes) -> ("epochs" | "minutes", number)."""
    text = str(value)
    match = _MINUTES.match(text)
    if match:
        return "minutes", float(match.group(1))
    if text.strip().isdigit() and int(text) >= 1:
        return "epochs", int(text)
    raise ValueError(f"checkpoint_every {value!r}: give a number of epochs (e.g. 5) or of minutes (e.g. 30min)")


class CheckpointCadence:
    def __init__(self, every):
        self.unit, self.every = parse_checkpoint_every(every)
        self.last_epochs, self.last_time = 0, time.monotonic()

    def due(self, epochs_done):
        """Is a checkpoint due after ``epochs_done`` epochs of this invocation?"""
        if self.unit == "epochs":
            return epochs_done - self.last_epochs >= self.every
        return time.monotonic() - self.last_time >= 60 * self.every

    def saved(self, epochs_done):
        self.last_epochs, self.last_time = epochs_done, time.monotonic()
