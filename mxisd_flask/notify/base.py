"""What every connector (one transport of one medium) offers.

A connector receives finished content: for email the rendered message
(headers and body), for SMS the text. Rendering belongs to the generator,
choosing templates to the notification handler.
"""

from __future__ import annotations

from typing import ClassVar, Protocol


class Connector(Protocol):
    """Hands one message to a transport; raises NotifyError when it cannot."""

    medium: ClassVar[str]
    name: ClassVar[str]

    def send(self, recipient: str, content: str) -> None: ...
