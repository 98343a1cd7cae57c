"""pycaffe's Classifier: a TEST Net with an input Transformer that predicts class
probabilities of H x W x K images, from the centre crop or averaged over Caffe's 10 crops
(corners, centre and their mirrors), as python/caffe/classifier.py does."""
import numpy as np

from . import caffe_io as io
from .net import TEST, Net


class Classifier(Net):
    """Classifier(model_file, pretrained_file, image_dims=None, mean=None, input_scale=None,
    raw_scale=None, channel_swap=None); image_dims: the size images are scaled to before
    cropping (default: the input blob's)."""

    def __init__(self, model_file, pretrained_file, image_dims=None, mean=None,
                 input_scale=None, raw_scale=None, channel_swap=None):
        super().__init__(model_file, TEST, weights=pretrained_file)
        name = self.inputs[0]
        self.transformer = io.Transformer({name: self.blobs[name].data.shape})
        self.transformer.set_transpose(name, (2, 0, 1))
        for setter, value in ((self.transformer.set_mean, mean),
                              (self.transformer.set_input_scale, input_scale),
                              (self.transformer.set_raw_scale, raw_scale),
                              (self.transformer.set_channel_swap, channel_swap)):
            if value is not None:
                setter(name, value)
        self.crop_dims = np.array(self.blobs[name].data.shape[2:])
        self.image_dims = image_dims if image_dims else self.crop_dims

    def predict(self, inputs, oversample=True):
        """(N x classes) probabilities of N images (H x W x K arrays)."""
        scaled = np.zeros((len(inputs), self.image_dims[0], self.image_dims[1],
                           inputs[0].shape[2]), dtype=np.float32)
        for i, image in enumerate(inputs):
            scaled[i] = io.resize_image(image, self.image_dims)
        if oversample:
            crops = io.oversample(scaled, self.crop_dims)
        else:
            centre = np.array(self.image_dims) / 2.0
            box = (np.tile(centre, (1, 2))[0] + np.concatenate(
                [-self.crop_dims / 2.0, self.crop_dims / 2.0])).astype(int)
            crops = scaled[:, box[0]:box[2], box[1]:box[3], :]
        batch = np.zeros(np.array(crops.shape)[[0, 3, 1, 2]], dtype=np.float32)
        for i, crop in enumerate(crops):
            batch[i] = self.transformer.preprocess(self.inputs[0], crop)
        predictions = self.forward_all(**{self.inputs[0]: batch})[self.outputs[0]]
        if oversample:
            predictions = predictions.reshape((len(predictions) // 10, 10, -1)).mean(1)
        return predictions
