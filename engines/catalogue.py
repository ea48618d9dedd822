"""What every list of models shares: names, and one way to find a model by name or hash.

The model repository, a worker's registry and the bridge's directory of announced
models are all catalogues; the old API accepts a model's name or its hash
wherever it takes a model, and all of them must answer alike.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterable

from engines.errors import ModelNotFound

#: Fixed namespace of all tfstream hashes. Changing it changes every hash clients hold.
HASH_NAMESPACE = uuid.UUID("6f0c5a4e-2b1d-5c8e-9a57-3f4be1d0c7a2")


@functools.lru_cache(maxsize=4096)
def model_hash(name: str) -> str:
    """The stable hash (uuid5) of a model name; pure, so cached."""
    return str(uuid.uuid5(HASH_NAMESPACE, f"model/{name}"))


class Catalogue:
    """A set of models that can be asked for by name or by hash."""

    def names(self) -> list[str]:
        """The models to list (sorted)."""
        raise NotImplementedError

    def known(self) -> Iterable[str]:
        """The models a name or hash may resolve to, cheapest first (default: `names`)."""
        return self.names()

    def resolve(self, name_or_hash: str) -> str:
        """A model name from a name or a model hash, as the old `/detect` accepted.

        Raises:
            ModelNotFound: neither a model name nor the hash of one.
        """
        for name in self.known():  # lazy: cheapest first, stop at the first match
            if name_or_hash == name or name_or_hash == model_hash(name):
                return name
        raise ModelNotFound(f"no model named or hashed '{name_or_hash[:200]}'")
