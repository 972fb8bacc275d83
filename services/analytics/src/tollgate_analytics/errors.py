"""Analytics errors::

TollgateError (tollgate_core.errors)
└── DependencyUnavailable
    └── StorageUnavailable   the dataset's disk or bucket refuses a write or a listing
"""

from __future__ import annotations

from tollgate_core.errors import DependencyUnavailable


class StorageUnavailable(DependencyUnavailable):
    """The dataset's storage (local disk or S3) cannot be written or listed right now."""
