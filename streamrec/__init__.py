"""streamrec: a streaming real-time personalization engine.

This small package holds what every part shares: the CLI, typed settings, the event
contract and the error tree. Everything else lives in the role packages beside it.
"""

from __future__ import annotations

__version__ = "0.1.0"
