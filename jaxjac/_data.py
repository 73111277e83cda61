"""Dataset input and Jacobian output for `jaxjac jacobian`: streaming readers and writers.

Readers live in `_readers` (format backends in `_sources`), writers in `_writers`; their
docstrings describe the formats, partial files and bfloat16 storage.
"""

from __future__ import annotations

from ._readers import Reader as Reader
from ._readers import open_reader as open_reader
from ._writers import DTYPES as DTYPES
from ._writers import Writer as Writer
from ._writers import check_free_space as check_free_space
from ._writers import create_writer as create_writer
from ._writers import open_writer_for_resume as open_writer_for_resume
from ._writers import partial_path as partial_path
from ._writers import refuse_foreign_folder as refuse_foreign_folder
from ._writers import required_bytes as required_bytes
