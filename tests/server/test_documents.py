"""PDF making (server/services/documents.py): the warm-up a web worker does when it starts, and
the font configuration kept per thread (Pango's objects must not be shared between threads)."""

from __future__ import annotations

import threading

from server.services import documents


def test_documents_warm_up_makes_a_pdf_and_each_thread_keeps_its_own_fonts() -> None:
    assert documents.warm_up() > 0
    mine = documents._font_config()
    # The next document of this thread reuses the fonts the warm-up loaded...
    assert documents.pdf(documents.WARM_UP_PAGE).startswith(b"%PDF-")
    assert documents._font_config() is mine
    # ...and another thread (the threaded dev server) gets its own.
    theirs: list[object] = []
    worker = threading.Thread(target=lambda: theirs.append(documents._font_config()))
    worker.start()
    worker.join()
    assert theirs and theirs[0] is not mine
