"""ib-stream for Python: a streaming client of the web API (`StreamClient`,
`AsyncStreamClient`), the engine's shared-memory ring in-process (`RingReader`) and stored
history (`read_history`). See docs/CLIENTS.md."""

from ._messages import (
    Complete,
    Control,
    FrameError,
    Gap,
    Heartbeat,
    Info,
    Message,
    ServerError,
    Subscription,
    Tick,
)
from ._metrics import Health, Metrics
from ._state import TRANSITIONS, InvalidTransition, State
from .client import AsyncStreamClient, StateChange, StreamClient, StreamClientError
from .history import History, HistoryError, HistoryGap, read_history
from .records import RECORD_DTYPE, decode_columns
from .ring import Batch, Lost, RingError, RingReader, WriterRestart

__version__ = "0.1.0"

__all__ = [
    "RECORD_DTYPE",
    "TRANSITIONS",
    "AsyncStreamClient",
    "Batch",
    "Complete",
    "Control",
    "FrameError",
    "Gap",
    "Health",
    "Heartbeat",
    "History",
    "HistoryError",
    "HistoryGap",
    "Info",
    "InvalidTransition",
    "Lost",
    "Message",
    "Metrics",
    "RingError",
    "RingReader",
    "ServerError",
    "State",
    "StateChange",
    "StreamClient",
    "StreamClientError",
    "Subscription",
    "Tick",
    "WriterRestart",
    "__version__",
    "decode_columns",
    "read_history",
]
