"""Images in: folders, TFDS and prepared array_record stores read into
batches (``data``: sources, crops, the mean image; ``store``: ``prepare.py``'s
shards; ``loader``: the Grain pipeline that streams them to every host).
"""

from zfjax._lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
