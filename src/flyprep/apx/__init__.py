"""AstroPix ``.apx`` files: reading, writing, following growing files, decoding hits.

Stands on its own (numpy only). The format and the reference's decoding rules are
described in ``docs/apx-format.md``.
"""
