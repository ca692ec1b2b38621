"""The one root exception of the protocol package."""


class ProtocolError(ValueError):
    """A message that breaks the protocol: not JSON, wrong version, wrong types, bad topic.

    ``code`` is a short machine-readable tag used for counting rejects; ``detail`` is
    a sentence a person can act on.
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
