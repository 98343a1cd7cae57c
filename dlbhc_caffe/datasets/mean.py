"""A dataset's mean image as Caffe's compute_image_mean writes it: 1 x C x H x W float, binaryproto.

>>> import numpy as np
>>> acc = MeanAccumulator()
>>> acc.add(np.zeros((3, 2, 2), np.uint8)); acc.add(np.full((3, 2, 2), 255, np.uint8))
>>> acc.mean()[0, 0, 0]
127.5
"""
import numpy as np

from ..proto import write_blob
from .db import open_db
from .manifest import DatasetError
from .records import decode_datum


class MeanAccumulator:
    """Sums C x H x W uint8 images exactly and gives their mean.

    Sums run in uint16 for up to 257 images (257 x 255 < 2**16), then move to an int64 total:
    cheaper per image than adding into int64, and still exact.
    """

    CHUNK = 257

    def __init__(self):
        self.total = None
        self.count = 0
        self._chunk = None
        self._in_chunk = 0

    def add(self, image):
        """Add one C x H x W uint8 image; every image must have the first one's shape."""
        if self.total is None:
            self.total = np.zeros(image.shape, np.int64)
            self._chunk = np.zeros(image.shape, np.uint16)
        elif image.shape != self.total.shape:
            raise DatasetError(f"image {self.count} has shape {image.shape}, the mean is "
                               f"{self.total.shape}")
        np.add(self._chunk, image, out=self._chunk, casting="unsafe")
        self._in_chunk += 1
        self.count += 1
        if self._in_chunk == self.CHUNK:
            self._settle()

    def _settle(self):
        if self._in_chunk:
            self.total += self._chunk
            self._chunk[:] = 0
            self._in_chunk = 0

    def mean(self):
        """C x H x W float32 (float64 sums divided once, as compute_image_mean does)."""
        if not self.count:
            raise DatasetError("the mean of no images")
        self._settle()
        return (self.total / self.count).astype(np.float32)

    def write(self, path):
        """Write the mean as a 1 x C x H x W binaryproto (legacy num/channels/height/width)."""
        return write_blob(self.mean()[np.newaxis], path)


def compute_mean(db_path, backend=None):
    """The C x H x W float32 mean of every record in a database (raw or encoded)."""
    acc = MeanAccumulator()
    for _, datum in open_db(db_path, backend):
        acc.add(decode_datum(datum))
    return acc.mean()
